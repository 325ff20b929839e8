"""Two real processes (torch.distributed.run, gloo on CPU): the lr schedule spans max_steps.

Measured: with the scheduler prepared by accelerate (the old code) both ranks' rates were
[2.5e-4, 0, 0, 0] (the schedule ended at step 2 of 4); now [3.75e-4, 2.5e-4, 1.25e-4, 0]; both
ranks end with identical rows (gradients averaged). About a minute on 2 cores: slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.core.models.builders import build_tiny_sd
from magicapture_pipeline.tracking.server import free_port

SCRIPT = Path(__file__).with_name("ddp_lr_check.py")


def _json_objects(text: str) -> list[dict]:
    """Every JSON object printed by the ranks: two processes share one pipe, so one rank's object
    can land on the same line as the other's (seen: 'Extra data' from ``json.loads`` per line)."""
    decoder, found, index = json.JSONDecoder(), [], text.find("{")
    while index != -1:
        value, end = decoder.raw_decode(text, index)
        found.append(value)
        index = text.find("{", end)
    return found


def test_json_objects_splits_two_ranks_on_one_line():
    text = 'noise\n{"rank": 0, "a": [1]}{"rank": 1}\n{"rank": 2}\n'
    assert [x["rank"] for x in _json_objects(text)] == [0, 1, 2]


@pytest.mark.slow
def test_two_processes_follow_the_whole_schedule(tmp_path):
    root = build_tiny_sd(tmp_path / "tiny_sd", TinyModelConfig())
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(SCRIPT), str(root),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = _json_objects(done.stdout)
    assert sorted(line["rank"] for line in lines) == [0, 1]
    for line in lines:
        assert line["processes"] == 2
        assert line["rates"] == pytest.approx([3.75e-4, 2.5e-4, 1.25e-4, 0.0])
    assert lines[0]["rows_sum"] == pytest.approx(lines[1]["rows_sum"], abs=0)
