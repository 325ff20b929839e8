"""Killed at any moment, resumed to the same result (issue 14 §3).

A real training process (``tests/kill_worker.py``: stage one then stage two on the tiny model, a
checkpoint after every step, ``resume: true``) is killed with SIGKILL, not an exception: at a random
moment of each stage, and in the middle of writing a checkpoint of each stage (after the tensors,
before ``state.json``). Each time the same command is started again; the run that finally completes
must hold exactly the weights of a run that was never interrupted (CPU, same seed) and, validating
every 2 steps, the validation history and images of every step, those validated before a kill
included (issue 20).
"""

from __future__ import annotations

import json
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
POLL_S = 0.005  # how often a run's output file is read while waiting for a line


class _Runs:
    """Training runs as processes forked by one ``kill_worker.py --zygote`` (which imported
    torch, diffusers and the trainers once): each run is its own process that the test kills
    with SIGKILL, as before, without paying the imports six times."""

    def __init__(self, logs: Path) -> None:
        logs.mkdir()
        self.logs, self.count = logs, 0
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.zygote = subprocess.Popen(
            [sys.executable, str(WORKER), "--zygote"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.zygote.stdout:
            self.replies.put(line.strip())
        self.replies.put(None)

    def _reply(self, word: str, timeout: float | None = 600) -> list[str]:
        line = self.replies.get(timeout=timeout)
        assert line is not None and line.startswith(word), (line, self.zygote.poll())
        return line.split()

    def start(self, *argv: str) -> tuple[int, Path, Path]:
        """Fork one run of ``kill_worker.py argv``: its pid, stdout file and stderr file."""
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        request = {"argv": list(argv), "out": str(out), "err": str(err)}
        self.zygote.stdin.write(json.dumps(request) + "\n")
        self.zygote.stdin.flush()
        return int(self._reply("started")[1]), out, err

    def ended(self, pid: int, timeout: float | None = 600) -> int | None:
        """The run's exit code (negative: killed by that signal); None if still running."""
        try:
            _, got, code = self._reply("ended", timeout)
        except queue.Empty:
            return None
        assert int(got) == pid, (got, pid)
        return int(code)

    def close(self) -> None:
        self.zygote.stdin.close()
        self.zygote.wait(timeout=60)
        self.reader.join(timeout=60)


@pytest.fixture
def runs(tmp_path):
    started = _Runs(tmp_path / "logs")
    try:
        yield started
    finally:
        started.close()


def _run_to_end(runs: _Runs, tiny: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [str(tiny), str(work), *extra]
    pid, out, err = runs.start(*argv)
    code = runs.ended(pid)
    return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())


def _kill_at(
    runs: _Runs, tiny: Path, work: Path, stage: str, step: int, delay: float, *extra: str
) -> tuple[list[str], int]:
    """Start a run, SIGKILL it ``delay`` s after it reports ``step <stage> <step>``.

    The kill comes earlier if the worker reports the save of the next checkpoint first: on a fast
    machine ``delay`` spans several tiny steps, and the kill must land before checkpoint 4 (which
    the mid-save kill that follows needs to write itself).
    """
    pid, out, _ = runs.start(str(tiny), str(work), *extra)
    seen: list[str] = []
    pending, deadline, code = "", None, None
    with out.open() as lines:
        while code is None:
            *complete, pending = (pending + lines.read()).split("\n")
            for line in complete:
                seen.append(line.strip())
                if line.strip() == f"step {stage} {step}":
                    deadline = time.monotonic() + delay
                elif deadline is not None and line.strip() == f"saved {stage} {step + 1}":
                    deadline = time.monotonic()  # no later than right after the next save
                    break
            if deadline is not None and time.monotonic() >= deadline:
                break  # the random pause is over
            code = runs.ended(pid, timeout=POLL_S)  # ended on its own: the caller's assert says so
    if code is None:
        os.kill(pid, signal.SIGKILL)
        code = runs.ended(pid)
    return seen, code


def _validation_files(work: Path) -> dict[str, bytes]:
    root = work / "validation"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.*"))}


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_uninterrupted_weights_and_validation(
    tmp_path, runs
):
    """One uninterrupted run and one run killed four times, both validating every 2 steps.

    Each stage is killed at a random moment (a random pause after step 1 or 2), then in the middle
    of writing its checkpoint 4 (after step 4's validation, the validated step's): the resumed
    runs start after step 3, so step 2's validation rows and images come back from checkpoint 3.
    The end holds exactly the uninterrupted weights and validation history and images.
    (The two tests this replaces, one without validation and one killed after stage one's step 3,
    each paid for their own uninterrupted run and tiny SD: 10 training processes, now 6.)
    """
    tiny = build_tiny_sd(tmp_path / "tiny_sd", TinyModelConfig(sample_size=32))
    straight = _run_to_end(runs, tiny, tmp_path / "straight", "--validate")
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = load_file(tmp_path / "straight" / "final.safetensors")
    expected_validation = _validation_files(tmp_path / "straight")
    for stage in ("stage_one", "stage_two"):  # both validations' rows and images, at 2 and 4
        names = {f"{stage}/history.json", f"{stage}/step_000002-grid.png",
                 f"{stage}/step_000004-grid.png"}  # fmt: skip
        assert {k for k in expected_validation if k.startswith(stage)} == names
    assert (expected_validation["stage_one/step_000002-grid.png"]
            != expected_validation["stage_one/step_000004-grid.png"])  # fmt: skip

    work = tmp_path / "killed"
    rng = random.Random(14)
    kills = []
    for stage in ("stage_one", "stage_two"):
        # A random moment: a random pause after a random early step (inside the next step's
        # forward/backward, its validation, or the checkpoint save after it)...
        step, delay = rng.randint(1, 2), rng.uniform(0.0, 0.3)
        seen, code = _kill_at(runs, tiny, work, stage, step, delay, "--validate")
        assert code == -signal.SIGKILL, (stage, step, seen[-3:])
        if stage == "stage_two":  # stage one resumed from checkpoint 3, after step 2's validation
            assert seen[0] == "step stage_one 4", seen[:3]
        kills.append((stage, step, round(delay, 3)))
        # ...then in the middle of writing a later checkpoint (the process kills itself there).
        died = _run_to_end(runs, tiny, work, "--validate", f"--die-in-save={stage}:4")
        assert died.returncode == -signal.SIGKILL, (stage, died.stdout[-300:])
        assert f"saved {stage} 4" not in died.stdout
        assert not (work / stage / "checkpoint-4").exists()
        assert (work / stage / ".checkpoint-4.tmp").is_dir()  # the half-written save
        kills.append((stage, "in save 4"))
    finished = _run_to_end(runs, tiny, work, "--validate")
    assert finished.returncode == 0, finished.stderr[-2000:]
    got = load_file(work / "final.safetensors")

    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), (name, kills)
    # The last run resumed stage two from checkpoint 3 (4 was half-written) and skipped stage one.
    assert "step stage_one" not in finished.stdout
    assert finished.stdout.splitlines()[0] == "step stage_two 4"
    # Disk stays bounded: keep_checkpoints = 2 per stage (+ the best validated step's, which
    # pruning protects), the same folders as the uninterrupted run, the half-written one gone.
    for stage in ("stage_one", "stage_two"):
        names = sorted(p.name for p in (work / stage).iterdir())
        assert names[-2:] == [f"checkpoint-{STEPS - 1}", f"checkpoint-{STEPS}"], names
        assert names[:-2] in ([], ["checkpoint-2"]), names
        assert names == sorted(p.name for p in (tmp_path / "straight" / stage).iterdir())
    # Validation rows and images of every step, those validated before a kill included (issue 20).
    got_validation = _validation_files(work)
    assert sorted(got_validation) == sorted(expected_validation)
    for name, content in expected_validation.items():
        assert got_validation[name] == content, (name, kills)
