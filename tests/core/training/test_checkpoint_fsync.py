"""A checkpoint's files reach the disk before its folder gets its final name (a spy on the
system calls: ``os.fsync`` by the path behind its descriptor, ``os.rename``/``os.replace``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from magicapture_pipeline.config.training import StageOneConfig
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageOneTrainer, TrainingExample

RES = 32


@pytest.fixture(scope="module")
def tiny_dir(tiny_sd):
    return tiny_sd(sample_size=RES)


def _trainer(tiny_dir) -> StageOneTrainer:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, RES // 8, RES // 8)
    mask[:, :2, 1:3] = 1.0
    examples = [
        TrainingExample(f"{role}0", role, torch.rand(3, RES, RES, generator=generator) * 2 - 1,
                        mask.clone() if role == "source" else 1 - mask, None)
        for role in ("source", "reference")
    ]  # fmt: skip
    config = StageOneConfig(max_steps=2, gradient_accumulation_steps=1, mixed_precision="no",
                            hflip=False)  # fmt: skip
    return StageOneTrainer(load_components(tiny_dir), examples, config)


def test_every_file_is_fsynced_before_the_rename(tiny_dir, tmp_path, monkeypatch):
    trainer = _trainer(tiny_dir)
    trainer.step()
    events: list[tuple[str, str, str]] = []
    fsync, rename, replace = os.fsync, os.rename, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        fsync(fd)

    def spy_rename(src, dst, *args, **kwargs):  # noqa: ANN001
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        return rename(src, dst, *args, **kwargs)

    def spy_replace(src, dst, *args, **kwargs):  # noqa: ANN001
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "rename", spy_rename)
    monkeypatch.setattr(os, "replace", spy_replace)
    final = Path(trainer.save_checkpoint(tmp_path))
    monkeypatch.undo()

    [swap] = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(final)]
    temp = Path(events[swap][1])
    files = sorted(p.name for p in final.iterdir())
    assert len(files) >= 4, files  # state, trainable, optimizer, rng
    synced_before = {Path(e[1]) for e in events[:swap] if e[0] == "fsync"}
    missing = [name for name in files if temp / name not in synced_before]
    assert not missing, f"not fsync-ed before the rename to {final.name}: {missing}"
    assert temp in synced_before  # the folder's own entries too
    synced_after = {Path(e[1]) for e in events[swap + 1 :] if e[0] == "fsync"}
    assert final.parent in synced_after  # and the rename itself is made durable
