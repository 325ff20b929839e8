"""Checkpoints of a trainer: written whole or not at all, resumed from the newest complete one.

A checkpoint ``checkpoint-<step>/`` holds

* ``trainable.safetensors``: the trainable tensors only (LoRA weights and the K placeholder rows,
  never the whole 49,410 x 768 token-embedding matrix: ~150 MB less per checkpoint at SD size);
* ``optimizer.pt``: the optimiser state (tensors only, read back with ``weights_only=True``);
* ``rng-<process>.safetensors``: each process's generator, torch and python RNG states;
* ``validation_images/step_<n>/<name>.png``: the images of every validation so far (with a
  validator; :mod:`.validation_images`), so a resume keeps those of the steps before it;
* ``state.json``, written last: stage, step, lr schedule, history, the placeholder token ids and a
  manifest (size and SHA-256 of every other file).

It is built in a hidden sibling ``.checkpoint-<step>.tmp``, every file ``fsync``-ed, and renamed
into place only when complete, so a run killed while saving leaves no ``checkpoint-<step>/``
(ours: the official code writes with accelerate's ``save_state`` straight into the final folder).
Under several processes only the main process writes the shared files and renames; every process
writes its own RNG file. Resume takes the newest checkpoint that is complete and matches the
trainer; an incomplete or corrupt one (no ``state.json``, a missing or truncated file, a checksum
or shape that does not match) is skipped with a warning naming it. The newest ``keep`` complete
checkpoints of a stage are kept; older ones are deleted after each save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from magicapture_pipeline.core import atomic
from magicapture_pipeline.core.training.validation_images import read_images, write_images

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
FORMAT_VERSION = 2
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
# Written first into every checkpoint this project makes: clearing and pruning touch only folders
# that hold it, so a checkpoint_dir pointed at someone else's folder loses nothing (issue 21).
MARKER_FILE = ".magicapture-checkpoint"


class CheckpointUnusable(ValueError):
    """A checkpoint folder that is incomplete, corrupt or written for another trainer."""


def _step_of(path: Path) -> int | None:
    suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=_step_of)


def last_checkpoint(root: str | Path | None) -> Path | None:
    """The checkpoint folder with the highest step under ``root`` (complete or not)."""
    if root is None:
        return None
    dirs = _checkpoint_dirs(Path(root))
    return dirs[-1] if dirs else None


def _rng_file(process_index: int) -> str:
    return f"rng-{process_index}.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _python_rng_tensors() -> dict[str, torch.Tensor]:
    version, internal, gauss = random.getstate()
    return {
        "python_version": torch.tensor([version], dtype=torch.int64),
        "python_internal": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss]),
    }


def _python_rng_state(tensors: dict[str, torch.Tensor]) -> tuple:
    gauss = float(tensors["python_gauss"][0])
    return (
        int(tensors["python_version"][0]),
        tuple(int(v) for v in tensors["python_internal"].tolist()),
        None if math.isnan(gauss) else gauss,  # NaN marks "no cached gauss"
    )


def save_checkpoint(trainer: Any, root: str | Path, keep: int = 0) -> Path:
    """Write ``root/checkpoint-<step>/`` for ``trainer`` whole, then keep the newest ``keep``.

    Args:
        trainer: a ``_Trainer``.
        root: the stage's checkpoint folder.
        keep: complete checkpoints to keep (older ones are deleted); 0 keeps all.

    Raises:
        core.atomic.WriteFailed: the folder could not be written (full disk, read-only); earlier
            checkpoints are unchanged.
    """
    from safetensors.torch import save_file

    accelerator = trainer.accelerator
    root = Path(root)
    final = root / f"{CHECKPOINT_PREFIX}{trainer.global_step}"
    temp = root / f".{final.name}.tmp"
    try:
        if accelerator.is_main_process:
            if temp.exists():
                shutil.rmtree(temp)  # left by a run killed while saving
            temp.mkdir(parents=True)
            (temp / MARKER_FILE).write_text(f"{trainer.stage} step {trainer.global_step}\n")
        accelerator.wait_for_everyone()
        rng = {
            "generator": trainer.generator.get_state(),
            "torch": torch.get_rng_state(),
            **_python_rng_tensors(),
        }
        save_file(rng, temp / _rng_file(accelerator.process_index))
        atomic.fsync_file(temp / _rng_file(accelerator.process_index))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tensors = {k: v.detach().cpu().contiguous() for k, v in trainer._trainable().items()}
            save_file(tensors, temp / TRAINABLE_FILE)
            with (temp / OPTIMIZER_FILE).open("wb") as handle:
                torch.save(trainer.optimizer.state_dict(), handle)
            validator = getattr(trainer, "validator", None)
            if validator is not None and validator.images:
                done = [d for d in _checkpoint_dirs(root) if (d / STATE_FILE).is_file()]
                previous = next((d for d in reversed(done) if _step_of(d) < _step_of(final)), None)
                write_images(temp, validator.images, previous)
            atomic.fsync_tree(temp)
            manifest = {
                p.relative_to(temp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(temp.rglob("*"))
                if p.is_file() and p.name != MARKER_FILE
            }
            state = {
                "format_version": FORMAT_VERSION,
                "stage": trainer.stage,
                "step": trainer.global_step,
                "token_ids": list(trainer.token_ids),
                "processes": accelerator.num_processes,
                "lr_scheduler": trainer.lr_scheduler.state_dict(),
                "history": trainer.history,
                "validation": _validator_state(trainer),
                "files": manifest,
            }
            (temp / STATE_FILE).write_text(json.dumps(state, indent=1))
            atomic.fsync_file(temp / STATE_FILE)
            atomic.swap_in_dir(temp, final)
    except Exception as error:
        io_error = atomic.as_os_error(error)
        if accelerator.is_main_process:
            shutil.rmtree(temp, ignore_errors=True)
        if io_error is not None:
            raise atomic.WriteFailed(final, io_error) from error
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        best = getattr(getattr(trainer, "validator", None), "best", None)
        prune_checkpoints(root, keep, protect={best.step} if best and best.step else set())
    logger.info("Saved %s checkpoint at step %d to %s", trainer.stage, trainer.global_step, final)
    return final


def _validator_state(trainer: Any) -> dict[str, Any] | None:
    validator = getattr(trainer, "validator", None)
    return None if validator is None else validator.state()


def prune_checkpoints(
    root: str | Path, keep: int, protect: set[int] | frozenset[int] = frozenset()
) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (0: keep all); returns the deleted.

    The checkpoints of the steps in ``protect`` (the best validation step) are never deleted.

    Incomplete folders older than the newest complete one are deleted too, and hidden folders a
    killed save or delete left behind.
    """
    for leftover in Path(root).glob(f".{CHECKPOINT_PREFIX}*"):
        if is_ours(leftover):
            shutil.rmtree(leftover, ignore_errors=True)  # a save or a delete that was killed
    if keep <= 0:
        return []
    dirs = [d for d in _checkpoint_dirs(Path(root)) if is_ours(d)]
    complete = [d for d in dirs if (d / STATE_FILE).is_file()]
    if not complete:
        return []
    kept = set(complete[-keep:])
    newest = _step_of(complete[-1])
    doomed = [
        d for d in dirs if d not in kept and _step_of(d) < newest and _step_of(d) not in protect
    ]
    for folder in doomed:
        trash = folder.with_name(f".{folder.name}.deleting-{os.getpid()}")
        os.rename(folder, trash)  # never a half-deleted folder under a checkpoint name
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def is_ours(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint this project wrote (it holds the marker file)."""
    return folder.is_dir() and not folder.is_symlink() and (folder / MARKER_FILE).is_file()


def clear_checkpoints(root: str | Path) -> list[Path]:
    """Delete the checkpoints this project wrote under ``root`` (``checkpoint-<N>/`` and hidden
    leftovers holding the marker); anything else there, and ``root`` itself, stays. Returns the
    deleted folders. Call it only after the parameter check accepted ``root``."""
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        return []
    doomed = [
        p for p in root.iterdir()
        if p.name.startswith((CHECKPOINT_PREFIX, f".{CHECKPOINT_PREFIX}")) and is_ours(p)
    ]  # fmt: skip
    for folder in doomed:
        trash = folder.with_name(f".{folder.name.lstrip('.')}.deleting-{os.getpid()}")
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


@dataclass
class _Loaded:
    folder: Path
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    images: dict[int, dict[str, Any]]


def _read(trainer: Any, folder: Path) -> _Loaded:
    """Read and check everything in ``folder`` without touching ``trainer``."""
    from safetensors.torch import load_file

    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise CheckpointUnusable(f"{STATE_FILE} is missing (the save did not finish)")
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointUnusable(f"{STATE_FILE} is unreadable ({error})") from error
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointUnusable(
            f"format {state.get('format_version', 1)}, this code reads {FORMAT_VERSION}"
        )
    if state.get("stage") != trainer.stage:
        raise CheckpointUnusable(f"a {state.get('stage')} checkpoint, not {trainer.stage}")
    if state.get("token_ids") != list(trainer.token_ids):
        raise CheckpointUnusable(
            f"placeholder token ids {state.get('token_ids')} differ from this trainer's "
            f"{list(trainer.token_ids)}"
        )
    for name, expected in state["files"].items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointUnusable(f"its manifest names {name!r}, outside the checkpoint")
        path = folder / name
        if not path.is_file():
            raise CheckpointUnusable(f"{name} is missing")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise CheckpointUnusable(f"{name} is truncated or changed (size/checksum differ)")
    rng_name = _rng_file(trainer.accelerator.process_index)
    if rng_name not in state["files"]:
        logger.warning(
            "%s has no RNG file for process %d (written by %d processes); using process 0's",
            folder, trainer.accelerator.process_index, state.get("processes", 1),
        )
        rng_name = _rng_file(0)
    try:
        tensors = load_file(folder / TRAINABLE_FILE)
        rng = load_file(folder / rng_name)
        optimizer = torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
        images = read_images(folder, state["files"])
    except Exception as error:  # safetensors / torch raise several types for corrupt files
        raise CheckpointUnusable(f"a file does not load ({error})") from error
    current = trainer._trainable()
    if set(tensors) != set(current):
        missing, extra = set(current) - set(tensors), set(tensors) - set(current)
        raise CheckpointUnusable(
            f"its tensors do not match this trainer (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(extra)[:3]})"
        )
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(current[name].shape):
            raise CheckpointUnusable(
                f"{name} has shape {tuple(value.shape)}, this trainer {tuple(current[name].shape)}"
            )
    groups = trainer.optimizer.state_dict()["param_groups"]
    saved_groups = optimizer.get("param_groups", [])
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in groups]:
        raise CheckpointUnusable("its optimiser parameter groups differ from this trainer's")
    return _Loaded(folder, state, tensors, optimizer, rng, images)


def _apply(trainer: Any, loaded: _Loaded) -> None:
    current = trainer._trainable()
    with torch.no_grad():
        for name, value in loaded.tensors.items():
            current[name].copy_(value.to(current[name].device, current[name].dtype))
    trainer.placeholder_rows.sync()  # the embedding matrix reads the restored rows
    trainer.optimizer.load_state_dict(loaded.optimizer)
    trainer.lr_scheduler.load_state_dict(loaded.state["lr_scheduler"])
    trainer.generator.set_state(loaded.rng["generator"])
    torch.set_rng_state(loaded.rng["torch"])
    random.setstate(_python_rng_state(loaded.rng))
    trainer.global_step = int(loaded.state["step"])
    trainer.history = list(loaded.state["history"])
    validator = getattr(trainer, "validator", None)
    if validator is not None:
        validator.load_state(loaded.state.get("validation"))
        validator.images = loaded.images


def load_checkpoint(trainer: Any, folder: str | Path) -> None:
    """Restore into ``trainer`` what :func:`save_checkpoint` wrote.

    Raises:
        CheckpointUnusable: the folder is incomplete, corrupt or for another trainer setup
            (nothing in ``trainer`` is changed then).
    """
    folder = Path(folder)
    try:
        loaded = _read(trainer, folder)
    except CheckpointUnusable as error:
        raise CheckpointUnusable(f"{folder}: {error}") from error
    _apply(trainer, loaded)
    logger.info("Resumed %s from %s (step %d)", trainer.stage, folder, trainer.global_step)


def resume_newest(trainer: Any, root: str | Path | None) -> Path | None:
    """Load the newest usable checkpoint under ``root``; warn about each one skipped.

    Returns:
        The folder resumed from, or ``None`` (no usable checkpoint: the run starts fresh).
    """
    if root is None:
        return None
    for folder in reversed(_checkpoint_dirs(Path(root))):
        try:
            loaded = _read(trainer, folder)
        except CheckpointUnusable as error:
            logger.warning("resume: skipping checkpoint %s: %s", folder, error)
            continue
        _apply(trainer, loaded)
        logger.info("Resumed %s from %s (step %d)", trainer.stage, folder, trainer.global_step)
        return folder
    logger.warning("resume: no usable checkpoint under %s, starting fresh", root)
    return None
