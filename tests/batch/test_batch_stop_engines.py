"""SIGTERM to the batch driver, beyond the local engine's happy path (issue 21 §2, round 3).

* a local worker that hangs while closing is SIGKILLed after ``--stop-grace-s``;
* with the Ray engine, the driver cancels its tasks, writes the summary with the stopped
  concepts marked, and dies by SIGTERM. It runs beside another Ray cluster on this machine
  (``ray.cluster_utils`` records it as the latest one in ``/tmp/ray/ray_current_cluster``, as
  ``ray start`` does): given no ``--address``, the batch starts its own local Ray with this
  machine's CPUs and never joins that cluster (``ray.init()`` with no address would, and then
  refuses ``num_cpus``: CI's failure of stop 23).

Real driver processes, real worker processes (the Kedro session inside them is the stand-in of
``standin/sitecustomize.py``), real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_batch import HEAD
from test_batch_outcomes import STANDIN, manifest

from magicapture_pipeline.core import procfs


def _driver(project: Path, path: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    calls = tmp_path / "calls.jsonl"
    paths = [str(STANDIN), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
           "STANDIN_CALLS": str(calls), "MAGICAPTURE_MLFLOW": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "magicapture_pipeline.batch", str(path), "--project", str(project),
         "--batch-id", "stop", "--threads", "1", "--retries", "0", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_for_call(driver: subprocess.Popen, calls: Path, name: str, limit_s: float) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        rows = [json.loads(x) for x in calls.read_text().splitlines()] if calls.is_file() else []
        found = [r for r in rows if r["concept"] == name]
        if found:
            return found[0]
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"{name} never started"
        time.sleep(0.2)


def _gone(pid: int) -> bool:
    fields = procfs.stat_fields(pid)
    return fields is None or procfs.is_zombie(fields)


def _summary(project: Path) -> dict:
    return json.loads((project / "data/08_reporting/batch/stop.json").read_text())


def test_a_worker_hanging_while_closing_is_sigkilled_after_the_grace(project_copy, tmp_path):
    driver = _driver(project_copy, manifest(tmp_path, "hang-a"), tmp_path, "--stop-grace-s", "2")
    try:
        pid = _wait_for_call(driver, tmp_path / "calls.jsonl", "hang-a", 120)["pid"]
        time.sleep(0.5)  # its SIGTERM handler is set right after the call is written
        stopped_at = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=60)
        took = time.monotonic() - stopped_at
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGTERM, output[-3000:]
    assert 2 <= took < 30, took  # waited the grace, not the hung close's hour
    assert _gone(pid)
    [concept] = _summary(project_copy)["concepts"]
    assert concept["status"] == "stopped"
    assert "stopped by SIGTERM (killed by SIGKILL)" in concept["reason"]


@pytest.mark.service
@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray at a time
def test_sigterm_to_a_ray_driver_cancels_its_tasks_and_marks_them_stopped(
    project_copy, tmp_path, monkeypatch
):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the bystander on loopback
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from ray.cluster_utils import Cluster

    path = manifest(tmp_path, "hold-a", "good-b")
    bystander = Cluster(initialize_head=True, head_node_args=HEAD)
    driver = None
    try:
        driver = _driver(project_copy, path, tmp_path, "--engine", "ray", "--workers", "1",
                         "--stop-grace-s", "20")  # fmt: skip
        pid = _wait_for_call(driver, tmp_path / "calls.jsonl", "hold-a", 240)["pid"]
        bystander.shutdown()  # the batch's own Ray runs its task: the bystander played its part
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=120)
    finally:
        bystander.shutdown()
        if driver is not None and driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGTERM, output[-3000:]
    assert _gone(pid)
    summary = _summary(project_copy)
    # beside another cluster: its own Ray, this machine's CPUs, all of them for its one worker
    cpus = os.cpu_count() or 1
    assert summary["engine_info"]["address"].startswith("local"), summary["engine_info"]
    assert summary["engine_info"]["cluster_resources"]["CPU"] == cpus
    assert summary["engine_info"]["task_options"] == {"num_cpus": cpus}
    assert (summary["stopped_by"], summary["stopped"]) == ("SIGTERM", 2), summary
    by_name = {c["name"]: c for c in summary["concepts"]}
    assert by_name["hold-a"]["status"] == by_name["good-b"]["status"] == "stopped"
    assert by_name["hold-a"]["reason"].startswith("stopped by SIGTERM (task ")
    assert by_name["good-b"]["reason"] == "stopped by SIGTERM before it started"
    rows = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [r["concept"] for r in rows] == ["hold-a"]  # not retried, good-b never ran
