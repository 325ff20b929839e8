"""Checkpoints are written whole, resume skips broken ones, and only K are kept (issue 14 §1)."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file

from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig
from magicapture_pipeline.core import atomic
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.models.tokens import embedding_matrix
from magicapture_pipeline.core.training import StageOneTrainer, StageTwoTrainer, TrainingExample
from magicapture_pipeline.core.training import checkpoints as ckpt

RES = 32
SETTINGS = {
    "max_steps": 6,
    "gradient_accumulation_steps": 1,
    "mixed_precision": "no",
    "lr_scheduler": "linear",
    "hflip": False,
}


@pytest.fixture(scope="module")
def tiny_dir(tiny_sd):
    return tiny_sd(sample_size=RES)


def _examples() -> list[TrainingExample]:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, RES // 8, RES // 8)
    mask[:, 1:3, 1:3] = 1.0
    return [
        TrainingExample(f"{role}0", role, torch.rand(3, RES, RES, generator=generator) * 2 - 1,
                        mask.clone(), None)
        for role in ("source", "reference")
    ]  # fmt: skip


def _trainer(tiny_dir, **overrides) -> StageOneTrainer:
    config = StageOneConfig(**{**SETTINGS, **overrides})
    return StageOneTrainer(load_components(tiny_dir), _examples(), config)


@pytest.fixture(scope="module")
def straight(tiny_dir):
    trainer = _trainer(tiny_dir)
    trainer.train(progress=False)
    return trainer


def _same_result(a: StageOneTrainer, b: StageOneTrainer) -> None:
    assert a.global_step == b.global_step
    assert torch.equal(embedding_matrix(a.text_encoder), embedding_matrix(b.text_encoder))
    assert a.history == b.history


def _crashed_run(tiny_dir, folder, until, **overrides) -> StageOneTrainer:
    first = _trainer(tiny_dir, checkpoint_every=2, checkpoint_dir=str(folder), **overrides)
    first.train(progress=False, until=until)
    return first


def test_checkpoint_holds_the_placeholder_rows_not_the_matrix(tiny_dir, tmp_path):
    trainer = _crashed_run(tiny_dir, tmp_path, until=2)
    folder = tmp_path / "checkpoint-2"
    tensors = load_file(folder / "trainable.safetensors")
    assert list(tensors) == ["placeholder_rows"]
    assert tensors["placeholder_rows"].shape == (2, 32)
    vocab = embedding_matrix(trainer.text_encoder).shape[0]
    assert vocab > 2
    state = json.loads((folder / "state.json").read_text())
    assert set(state["files"]) == {"trainable.safetensors", "optimizer.pt", "rng-0.safetensors"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resume_skips_an_incomplete_newest_checkpoint(tiny_dir, tmp_path, straight, caplog):
    _crashed_run(tiny_dir, tmp_path, until=5)  # checkpoints 2 and 4
    (tmp_path / "checkpoint-4" / "state.json").unlink()  # the old writer's half-saved folder
    resumed = _trainer(tiny_dir, checkpoint_every=2, checkpoint_dir=str(tmp_path), resume=True)
    with caplog.at_level(logging.WARNING):
        resumed.train(progress=False)
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0] and "state.json" in skipped[0]
    _same_result(resumed, straight)


@pytest.mark.parametrize("damage", ["truncate", "delete_optimizer", "flip_byte"])
def test_resume_skips_a_corrupt_checkpoint(tiny_dir, tmp_path, straight, caplog, damage):
    _crashed_run(tiny_dir, tmp_path, until=5)
    newest = tmp_path / "checkpoint-4"
    if damage == "truncate":
        data = (newest / "trainable.safetensors").read_bytes()
        (newest / "trainable.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "delete_optimizer":
        (newest / "optimizer.pt").unlink()
    else:
        path = newest / "trainable.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    resumed = _trainer(tiny_dir, checkpoint_every=2, checkpoint_dir=str(tmp_path), resume=True)
    with caplog.at_level(logging.WARNING):
        resumed.train(progress=False)
    assert any("checkpoint-4" in r.getMessage() for r in caplog.records)
    _same_result(resumed, straight)


def _stage_two(tiny_dir, rank, **overrides):
    config = StageTwoConfig(
        **{**SETTINGS, "max_steps": 2, "heatmap_every": 0},
        lora={"rank": rank},
        identity={"mode": "off"},
        attention={"resolution": RES // 8},
        **overrides,
    )
    return StageTwoTrainer(load_components(tiny_dir), _examples(), config)


def test_a_checkpoint_of_another_setup_is_skipped_not_fatal(tiny_dir, tmp_path, caplog):
    _stage_two(tiny_dir, 4, checkpoint_every=1, checkpoint_dir=str(tmp_path)).train(
        progress=False, until=1
    )
    other = _stage_two(tiny_dir, 2)  # a different LoRA rank: other shapes
    with caplog.at_level(logging.WARNING):
        assert ckpt.resume_newest(other, tmp_path) is None
    assert other.global_step == 0
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint-1" in text and "has shape" in text and "starting fresh" in text
    stage_one = _trainer(tiny_dir)
    with pytest.raises(ckpt.CheckpointUnusable, match="a stage_two checkpoint, not stage_one"):
        stage_one.load_checkpoint(tmp_path / "checkpoint-1")


def test_keep_the_newest_k(tiny_dir, tmp_path):
    trainer = _trainer(tiny_dir, checkpoint_every=1, checkpoint_dir=str(tmp_path),
                       keep_checkpoints=2)  # fmt: skip
    trainer.train(progress=False, until=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-5"]


def test_a_save_that_dies_leaves_no_checkpoint_folder(tiny_dir, tmp_path, monkeypatch):
    trainer = _crashed_run(tiny_dir, tmp_path, until=2)
    trainer.step()

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # like a kill: not an error the writer handles

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "checkpoint-2"
    ]
    assert ckpt.resume_newest(_trainer(tiny_dir), tmp_path).name == "checkpoint-2"
    trainer.save_checkpoint(tmp_path)  # the next save clears the leftover temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_full_disk_while_saving_names_the_path_and_keeps_earlier(tiny_dir, tmp_path, monkeypatch):
    import safetensors.torch

    trainer = _crashed_run(tiny_dir, tmp_path, until=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-2").iterdir()}
    trainer.step()

    def enospc(*args, **kwargs):
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", enospc)
    with pytest.raises(atomic.WriteFailed) as caught:
        trainer.save_checkpoint(tmp_path)
    assert caught.value.errno == errno.ENOSPC
    assert str(tmp_path / "checkpoint-3") in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-2").iterdir()}


class _Process:
    """The parts of an accelerate ``Accelerator`` a checkpoint uses, for one of N processes that
    run as threads meeting at a barrier (``wait_for_everyone``)."""

    def __init__(self, index: int, barrier) -> None:
        self.process_index, self.num_processes = index, barrier.parties
        self.is_main_process = index == 0
        self._barrier = barrier

    def wait_for_everyone(self) -> None:
        self._barrier.wait(timeout=60)


def test_two_processes_one_writer_and_one_rng_file_each(tiny_dir, tmp_path):
    import threading

    barrier = threading.Barrier(2)
    trainers = [_trainer(tiny_dir) for _ in range(2)]
    for index, trainer in enumerate(trainers):
        trainer.accelerator = _Process(index, barrier)
        trainer.generator.manual_seed(100 + index)  # each process draws its own stream
    states = [t.generator.get_state().clone() for t in trainers]
    calls: dict[int, list[str]] = {0: [], 1: []}
    real_save = torch.save

    def recording_save(obj, handle, *args, **kwargs):
        calls[int(threading.current_thread().name[-1])].append("optimizer")
        return real_save(obj, handle, *args, **kwargs)

    errors = []

    def save(index: int) -> None:
        try:
            ckpt.save_checkpoint(trainers[index], tmp_path, keep=1)
        except BaseException as error:  # surfaced below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=save, args=(i,), name=f"proc{i}") for i in range(2)]
    torch.save = recording_save
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        torch.save = real_save
    assert not errors, errors
    assert calls == {0: ["optimizer"], 1: []}  # only the main process writes the shared files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0"]
    folder = tmp_path / "checkpoint-0"
    state = json.loads((folder / "state.json").read_text())
    assert {"rng-0.safetensors", "rng-1.safetensors"} <= set(state["files"])
    assert state["processes"] == 2

    # Each process resumes its own stream.
    for index in (1, 0):
        again = _trainer(tiny_dir)
        again.accelerator = _Process(index, threading.Barrier(1))
        again.generator.manual_seed(7)
        again.load_checkpoint(folder)
        assert torch.equal(again.generator.get_state(), states[index]), index

