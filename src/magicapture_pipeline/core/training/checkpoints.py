"""Checkpoints of a trainer: write, find the last one, and resume from it.

A checkpoint folder ``checkpoint-<step>/`` holds the trainable tensors and RNG states
(safetensors), the optimiser state (``torch.save`` of tensors only, read back with
``weights_only=True``), and the step, lr schedule, python RNG and history (json).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch

from magicapture_pipeline.core.tokens import embedding_matrix

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"


def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def last_checkpoint(root: str | Path | None) -> Path | None:
    """The checkpoint folder with the highest step under ``root`` (``None`` if there is none)."""
    if root is None:
        return None
    dirs = _checkpoint_dirs(Path(root))
    return dirs[-1] if dirs else None


def save_checkpoint(trainer: Any, root: str | Path) -> Path:
    """Write ``root/checkpoint-<step>/`` for ``trainer`` (see the module docstring)."""
    from safetensors.torch import save_file

    folder = Path(root) / f"{CHECKPOINT_PREFIX}{trainer.global_step}"
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in trainer._trainable().items()}
    save_file(tensors, folder / "trainable.safetensors")
    save_file(
        {"generator": trainer.generator.get_state(), "torch": torch.get_rng_state()},
        folder / "rng.safetensors",
    )
    torch.save(trainer.optimizer.state_dict(), folder / "optimizer.pt")
    state = {
        "stage": trainer.stage,
        "step": trainer.global_step,
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "python_random": _jsonable_random_state(random.getstate()),
        "history": trainer.history,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=1))
    logger.info("Saved %s checkpoint at step %d to %s", trainer.stage, trainer.global_step, folder)
    return folder


def load_checkpoint(trainer: Any, folder: str | Path) -> None:
    """Restore into ``trainer`` what :func:`save_checkpoint` wrote (same trainer setup required)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    if state["stage"] != trainer.stage:
        raise ValueError(f"{folder} is a {state['stage']} checkpoint, not {trainer.stage}")
    tensors = load_file(folder / "trainable.safetensors")
    current = trainer._trainable()
    if set(tensors) != set(current):
        raise ValueError(f"{folder} does not match this trainer's parameters")
    with torch.no_grad():
        for name, value in tensors.items():
            current[name].copy_(value.to(current[name].device, current[name].dtype))
    trainer.placeholder_rows.reload()
    optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True)
    trainer.optimizer.load_state_dict(placeholder_row_state(trainer, optimizer_state))
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng = load_file(folder / "rng.safetensors")
    trainer.generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    random.setstate(_random_state_from_json(state["python_random"]))
    trainer.global_step = int(state["step"])
    trainer.history = list(state["history"])
    logger.info("Resumed %s from %s (step %d)", trainer.stage, folder, trainer.global_step)


def placeholder_row_state(trainer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Optimiser state of a checkpoint written before only the placeholder rows were
    optimised (AdamW moments over the whole vocabulary): keep the placeholder rows' moments."""
    vocab = embedding_matrix(trainer.text_encoder).shape[0]
    for group in state.get("param_groups", []):
        if group.get("name") != "embedding":
            continue
        for index in group["params"]:
            slot = state["state"].get(index, {})
            for key, value in list(slot.items()):
                if torch.is_tensor(value) and value.ndim == 2 and value.shape[0] == vocab:
                    slot[key] = value[trainer.token_ids].clone()
    return state


def _jsonable_random_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _random_state_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
