"""Batch outcomes with a stand-in for the Kedro session (fast; the real chain: test_batch.py).

The engine, the worker processes, the retry of a dead worker and the summary are the real ones;
only the Kedro session inside each worker is ``standin/sitecustomize.py`` (on ``PYTHONPATH``, so it
is in every worker process), whose outcome each concept's name decides.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from magicapture_pipeline.batch.cli import main

STANDIN = Path(__file__).parent / "standin"


@pytest.fixture
def standin(tmp_path, monkeypatch) -> Path:
    calls = tmp_path / "calls.jsonl"
    paths = [str(STANDIN), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.setenv("STANDIN_CALLS", str(calls))
    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "0")  # no summary run: nothing to track here
    return calls


def manifest(tmp_path: Path, *names: str) -> Path:
    lines = ["concepts:"]
    for name in names:
        lines += [
            f"  - name: {name}",
            "    params:",
            f"      stage_one.checkpoint_dir: data/06_models/{name}/stage_one",
            f"      stage_two.checkpoint_dir: data/06_models/{name}/stage_two",
        ]
    path = tmp_path / "manifest.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(project: Path, path: Path, batch_id: str, *extra: str) -> tuple[int, dict]:
    code = main([str(path), "--project", str(project), "--batch-id", batch_id, "--threads", "1",
                 *extra])  # fmt: skip
    summary = project / "data" / "08_reporting" / "batch" / f"{batch_id}.json"
    return code, json.loads(summary.read_text())


def calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_failed_concept_is_reported_failed_and_the_exit_code_is_1(project_copy, tmp_path,
                                                                      standin):  # fmt: skip
    path = manifest(tmp_path, "good-a", "broken-b")
    code, summary = run(project_copy, path, "b1", "--workers", "2")
    assert code == 1
    by_name = {c["name"]: c for c in summary["concepts"]}
    assert by_name["good-a"]["status"] == "succeeded" and by_name["good-a"]["reason"] is None
    assert by_name["broken-b"]["status"] == "failed"
    assert "no face found in source photo 3" in by_name["broken-b"]["reason"]
    assert by_name["broken-b"]["attempts"] == 1  # a failure is not retried, only a death
    assert (summary["succeeded"], summary["failed"]) == (1, 1)


def test_a_dead_worker_is_retried_and_resumes_its_checkpoint(project_copy, tmp_path, standin):
    code, summary = run(project_copy, manifest(tmp_path, "flaky-c"), "b3", "--retries", "1")
    assert code == 0
    [concept] = summary["concepts"]
    assert (concept["status"], concept["attempts"]) == ("succeeded", 2)
    first, second = calls(standin)
    assert first["pid"] != second["pid"]  # a fresh process per attempt
    assert first == {**first, "resume": [False, False], "found": []}
    assert second == {**second, "resume": [True, True], "found": ["checkpoint-1"]}


def test_a_worker_dying_on_every_attempt_is_reported_failed(project_copy, tmp_path, standin):
    code, summary = run(project_copy, manifest(tmp_path, "flaky-d"), "b4", "--retries", "0")
    assert code == 1
    [concept] = summary["concepts"]
    assert concept["status"] == "failed" and "killed by SIGKILL" in concept["reason"]
