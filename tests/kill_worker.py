"""A real training process for tests/core/training/test_kill_resume.py (SIGKILL); not a test.

``python kill_worker.py TINY_SD WORK_DIR [--die-in-save STAGE:N]`` trains stage one then stage two
on the tiny model with a checkpoint after every step and ``resume: true``, printing
``step <stage> <n>`` after each optimiser step and ``saved <stage> <n>`` after each checkpoint
(flushed, so the test can kill it at a chosen moment), and writes the final weights to
``WORK_DIR/final.safetensors``. ``--die-in-save stage_two:3`` makes the process SIGKILL itself in
the middle of writing that checkpoint (after the tensors, before ``state.json``). ``--validate``
attaches a validator to each stage (every 2 steps, a stand-in scorer whose image is the live
trainable weights as pixels) and writes each stage's validation history and images to
``WORK_DIR/validation/<stage>/`` at the end.

``python kill_worker.py --zygote`` imports what a run needs once and then starts each run as a
forked child of itself (one JSON request a line on stdin: ``{"argv": [...], "out": path, "err":
path}``; it answers ``started <pid>`` and, when the child has ended, ``ended <pid> <code>``): each
run is still its own process, killed with a real SIGKILL, but does not pay the ~8 s CPU of
importing torch, diffusers, transformers and peft again (tests/core/training/test_kill_resume.py
starts six runs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

RES = 32
COMMON = {
    "max_steps": 5,
    "gradient_accumulation_steps": 1,
    "mixed_precision": "no",
    "lr_scheduler": "linear",
    "hflip": False,
    "checkpoint_every": 1,
    "keep_checkpoints": 2,
    "resume": True,
    "device": "cpu",
}


def examples():
    from magicapture_pipeline.core.training import TrainingExample

    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, RES // 8, RES // 8)
    mask[:, 1:3, 1:3] = 1.0
    return [
        TrainingExample(f"{role}0", role, torch.rand(3, RES, RES, generator=generator) * 2 - 1,
                        mask.clone(), None)
        for role in ("source", "reference")
    ]  # fmt: skip


def attach_validator(trainer) -> None:
    """Validate every 2 steps: metrics and an image that follow the live weights."""
    from PIL import Image

    from magicapture_pipeline.core.training.validation import Validator

    def scorer(step: int):
        values = torch.cat([v.detach().flatten() for v in trainer._trainable().values()])[:48]
        scaled = (values - values.min()) / (values.max() - values.min() + 1e-12) * 255
        pixels = scaled.round().to(torch.uint8).reshape(4, 4, 3).numpy()
        return {"csim_stub_heldout": float(values.sum())}, {"grid": Image.fromarray(pixels)}

    trainer.validator = Validator(every_n_steps=2, scorer=scorer, stage=trainer.stage)


def write_validation(trainer, work: Path) -> None:
    import json

    from magicapture_pipeline.core.training.validation import validation_outputs

    rows, images = validation_outputs(trainer.validator, {"exported_step": trainer.global_step})
    folder = work / "validation" / trainer.stage
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.json").write_text(json.dumps(rows, indent=1))
    for key, image in images.items():
        (folder / f"{key.replace('/', '-')}.png").parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{key.replace('/', '-')}.png")


def _announce(trainer_class, die_in_save: tuple[str, int] | None) -> None:
    from magicapture_pipeline.core import atomic
    from magicapture_pipeline.core.training import checkpoints

    step = trainer_class.step

    def step_and_say(self):
        row = step(self)
        print(f"step {self.stage} {self.global_step}", flush=True)  # noqa: T201
        return row

    trainer_class.step = step_and_say
    save = checkpoints.save_checkpoint
    fsync_tree = atomic.fsync_tree

    def fsync_or_die(folder):
        fsync_tree(folder)
        stage, number = die_in_save or ("", -1)
        if Path(folder).name == f".checkpoint-{number}.tmp" and stage in str(folder):
            os.kill(os.getpid(), signal.SIGKILL)  # tensors written, state.json not yet

    def save_and_say(trainer, root, keep=0):
        folder = save(trainer, root, keep)
        print(f"saved {trainer.stage} {trainer.global_step}", flush=True)  # noqa: T201
        return folder

    atomic.fsync_tree = fsync_or_die
    checkpoints.save_checkpoint = save_and_say


def preload() -> None:
    """Import everything a run imports (diffusers and transformers load their classes lazily)."""
    import accelerate  # noqa: F401
    import diffusers
    import peft  # noqa: F401
    import peft.utils  # noqa: F401
    import safetensors.torch  # noqa: F401
    import transformers
    from diffusers.utils import convert_state_dict_to_diffusers  # noqa: F401
    from PIL import Image  # noqa: F401

    from magicapture_pipeline.config.training import StageOneConfig  # noqa: F401
    from magicapture_pipeline.core.models import loading, tokens  # noqa: F401
    from magicapture_pipeline.core.training import StageTwoTrainer, validation  # noqa: F401

    for module, names in (
        (diffusers, ("AutoencoderKL", "DDPMScheduler", "UNet2DConditionModel")),
        (transformers, ("CLIPTextModel", "CLIPTokenizer")),
        (accelerate, ("Accelerator",)),
        (peft, ("LoraConfig", "inject_adapter_in_model")),
    ):
        for name in names:
            getattr(module, name)


def zygote() -> None:
    """Serve runs as forked children of this process (see the module's docstring). Nothing but
    imports happens here before a fork: no torch op, no thread, no RNG draw."""
    preload()
    for request in sys.stdin:
        job = json.loads(request)
        # the files exist before the test hears "started" (it opens stdout's at once)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        files = [os.open(job[key], flags, 0o644) for key in ("out", "err")]
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: one run, then out without the parent's cleanup
            code = 1
            try:
                for fd, target in zip((1, 2), files, strict=True):
                    os.dup2(target, fd)
                    os.close(target)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                try:
                    main(job["argv"])
                    code = 0
                except SystemExit as end:
                    code = end.code if isinstance(end.code, int) else 1
            except BaseException:  # noqa: BLE001 (reported on the run's stderr)
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        for target in files:
            os.close(target)
        print(f"started {pid}", flush=True)  # noqa: T201
        _, status = os.waitpid(pid, 0)
        print(f"ended {pid} {os.waitstatus_to_exitcode(status)}", flush=True)  # noqa: T201


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tiny_sd")
    parser.add_argument("work_dir")
    parser.add_argument("--die-in-save", default=None)
    parser.add_argument("--validate", action="store_true")
    args = parser.parse_args(argv)
    die = None
    if args.die_in_save:
        stage, number = args.die_in_save.split(":")
        die = (stage, int(number))

    from safetensors.torch import save_file

    from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig
    from magicapture_pipeline.core.models.loading import load_components
    from magicapture_pipeline.core.models.tokens import embedding_matrix
    from magicapture_pipeline.core.training import StageOneTrainer, StageTwoTrainer
    from magicapture_pipeline.core.training.loop import _Trainer

    _announce(_Trainer, die)
    work = Path(args.work_dir)
    one = StageOneTrainer(
        load_components(args.tiny_sd),
        examples(),
        StageOneConfig(**COMMON, checkpoint_dir=str(work / "stage_one")),
    )
    if args.validate:
        attach_validator(one)
    one.train(progress=False)
    embeddings = one.result().embeddings
    two = StageTwoTrainer(
        load_components(args.tiny_sd),
        examples(),
        StageTwoConfig(
            **COMMON,
            checkpoint_dir=str(work / "stage_two"),
            heatmap_every=0,
            identity={"mode": "off"},
            attention={"resolution": RES // 8},
        ),
        embeddings,
    )
    if args.validate:
        attach_validator(two)
    two.train(progress=False)
    if args.validate:
        write_validation(one, work)
        write_validation(two, work)
    final = {f"stage_two.{k}": v.detach().clone() for k, v in two._trainable().items()}
    final["text_encoder.token_embedding"] = embedding_matrix(two.text_encoder).detach().clone()
    final.update({f"stage_one.{k}": v.detach().clone() for k, v in embeddings.items()})
    save_file({k: v.contiguous() for k, v in final.items()}, work / "final.safetensors")
    print("done", flush=True)  # noqa: T201
    sys.exit(0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        zygote()
    else:
        main()
