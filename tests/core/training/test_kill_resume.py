"""Killed at any moment, resumed to the same result (issue 14 §3).

A real training process (``tests/kill_worker.py``: stage one then stage two on the tiny model, a
checkpoint after every step, ``resume: true``) is killed with SIGKILL, not an exception: at a random
moment of each stage, and in the middle of writing a checkpoint of each stage (after the tensors,
before ``state.json``). Each time the same command is started again; the run that finally completes
must hold exactly the weights of a run that was never interrupted (CPU, same seed), and with
validation on, the validation history and images of every step, those validated before a kill
included (issue 20).
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.core.models.builders import build_tiny_sd

WORKER = Path(__file__).resolve().parents[2] / "kill_worker.py"
STEPS = 5  # per stage, kill_worker.COMMON["max_steps"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run_to_end(tiny: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WORKER), str(tiny), str(work), *extra],
        capture_output=True, text=True, timeout=600, env=_env(), check=False,
    )  # fmt: skip


def _kill_at(
    tiny: Path, work: Path, stage: str, step: int, delay: float, *extra: str
) -> tuple[list[str], int]:
    """Start the worker, SIGKILL it ``delay`` s after it reports ``step <stage> <step>``.

    The kill comes earlier if the worker reports the save of the next checkpoint first: on a fast
    machine ``delay`` spans several tiny steps, and the kill must land before checkpoint 4 (which
    the mid-save kill that follows needs to write itself).
    """
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(tiny), str(work), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(),
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line.strip())
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                break  # the random pause is over
            if line is None:
                break  # the worker ended on its own: the caller's assertion says so
            seen.append(line)
            if line == f"step {stage} {step}":
                deadline = time.monotonic() + delay
            elif deadline is not None and line == f"saved {stage} {step + 1}":
                break  # no later than right after the next save
        process.send_signal(signal.SIGKILL)
    finally:
        code = process.wait(timeout=600)
        reader.join(timeout=60)
        process.stdout.close()
    return seen, code


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_uninterrupted_weights(tmp_path):
    tiny = build_tiny_sd(tmp_path / "tiny_sd", TinyModelConfig(sample_size=32))
    straight = _run_to_end(tiny, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = load_file(tmp_path / "straight" / "final.safetensors")

    work = tmp_path / "killed"
    rng = random.Random(14)
    kills = []
    for stage in ("stage_one", "stage_two"):
        # A random moment: a random pause after a random early step (inside the next step's
        # forward/backward, or the checkpoint save after it)...
        step, delay = rng.randint(1, 2), rng.uniform(0.0, 0.3)
        seen, code = _kill_at(tiny, work, stage, step, delay)
        assert code == -signal.SIGKILL, (stage, step, seen[-3:])
        kills.append((stage, step, round(delay, 3)))
        # ...then in the middle of writing a later checkpoint (the process kills itself there).
        died = _run_to_end(tiny, work, f"--die-in-save={stage}:4")
        assert died.returncode == -signal.SIGKILL, (stage, died.stdout[-300:])
        assert f"saved {stage} 4" not in died.stdout
        assert not (work / stage / "checkpoint-4").exists()
        assert (work / stage / ".checkpoint-4.tmp").is_dir()  # the half-written save
        kills.append((stage, "in save 4"))
    finished = _run_to_end(tiny, work)
    assert finished.returncode == 0, finished.stderr[-2000:]
    got = load_file(work / "final.safetensors")

    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), (name, kills)
    # The last run resumed stage two from checkpoint 3 (4 was half-written) and skipped stage one.
    assert "step stage_one" not in finished.stdout
    assert finished.stdout.splitlines()[0] == "step stage_two 4"
    # Disk stays bounded: keep_checkpoints = 2 per stage, and the half-written folder is gone.
    for stage in ("stage_one", "stage_two"):
        names = sorted(p.name for p in (work / stage).iterdir())
        assert names == [f"checkpoint-{STEPS - 1}", f"checkpoint-{STEPS}"], names


def _validation_files(work: Path) -> dict[str, bytes]:
    root = work / "validation"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.*"))}


@pytest.mark.slow
def test_sigkill_keeps_the_validation_history_and_images_of_earlier_steps(tmp_path):
    """Validation every 2 steps; killed in stage one after its step-2 validation, then in the
    middle of stage two's step-4 checkpoint (the validated step's): the resumed runs start after
    step 2 of each stage, and the end holds step 2's history rows and images all the same."""
    tiny = build_tiny_sd(tmp_path / "tiny_sd", TinyModelConfig(sample_size=32))
    straight = _run_to_end(tiny, tmp_path / "straight", "--validate")
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = _validation_files(tmp_path / "straight")
    for stage in ("stage_one", "stage_two"):  # both validations' rows and images, at 2 and 4
        names = {f"{stage}/history.json", f"{stage}/step_000002-grid.png",
                 f"{stage}/step_000004-grid.png"}  # fmt: skip
        assert {k for k in expected if k.startswith(stage)} == names
    assert expected["stage_one/step_000002-grid.png"] != expected["stage_one/step_000004-grid.png"]

    work = tmp_path / "killed"
    delay = random.Random(20).uniform(0.0, 0.3)
    seen, code = _kill_at(tiny, work, "stage_one", 3, delay, "--validate")
    assert code == -signal.SIGKILL, seen[-3:]
    died = _run_to_end(tiny, work, "--validate", "--die-in-save=stage_two:4")
    assert died.returncode == -signal.SIGKILL, died.stdout[-300:]
    assert int(died.stdout.splitlines()[0].split()[-1]) >= 3  # stage one resumed after step 2
    finished = _run_to_end(tiny, work, "--validate")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.splitlines()[0] == "step stage_two 4"  # resumed from checkpoint 3

    got = _validation_files(work)
    assert sorted(got) == sorted(expected)
    for name, content in expected.items():
        assert got[name] == content, (name, round(delay, 3))
