"""Run by test_training_ddp.py under ``torch.distributed.run`` (2 CPU processes, gloo): one
stage-one trainer with a linear schedule over 4 steps; prints each rank's learning rates and a
checksum of its placeholder rows as one JSON line."""

import json
import sys

import torch

from magicapture_pipeline.config.training import StageOneConfig
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageOneTrainer, TrainingExample


def main(root: str) -> None:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:6, 2:6] = 1
    examples = [
        TrainingExample(
            f"{role}{i}", role, torch.rand(3, 64, 64, generator=generator) * 2 - 1, mask
        )
        for role in ("source", "reference")
        for i in range(2)
    ]
    config = StageOneConfig(
        max_steps=4,
        gradient_accumulation_steps=1,
        mixed_precision="no",
        lr_scheduler="linear",
        device="cpu",
    )
    trainer = StageOneTrainer(load_components(root), examples, config)
    rates = [trainer.step()["lr_embedding"] for _ in range(4)]
    rows = trainer.placeholder_rows.params()[0].detach()
    line = {
        "rank": trainer.accelerator.process_index,
        "processes": trainer.accelerator.num_processes,
        "rates": rates,
        "rows_sum": float(rows.sum()),
    }
    print(json.dumps(line), flush=True)  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1])
