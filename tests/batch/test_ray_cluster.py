"""A batch on a multi-node Ray cluster on this machine, one worker node killed mid-run (§6).

``ray.cluster_utils.Cluster`` starts a head (no CPUs: it runs no concept) and two worker nodes of
one CPU each, every port on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). The batch driver
joins it with ``--address`` as on a real cluster. The Kedro session in each worker is the stand-in
of ``standin/sitecustomize.py``: ``hold-a`` writes a checkpoint and waits; the test kills the node
it runs on; Ray retries it on the other node, where it resumes from that checkpoint. Beside it, four
concepts on two workers (so they queue): ``good-b`` succeeds; ``broken-c`` fails and is reported
failed, never retried (a failure is not a death); ``flaky-d``'s worker process dies by SIGKILL
(Ray retries it in a fresh process, which resumes its checkpoint).

Real training and the PostgreSQL tracking server as the store: ``test_ray_cluster_real.py``. A
batch given no ``--address`` beside such a cluster starts its own Ray (it never joins it): the Ray
batch of ``test_batch.py`` runs beside one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_batch import HEAD
from test_batch_outcomes import manifest

STANDIN = Path(__file__).parent / "standin"

pytestmark = [pytest.mark.service, pytest.mark.slow, pytest.mark.xdist_group("ray")]


def _calls(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_a_killed_node_s_concept_resumes_on_another_node(project_copy, tmp_path, monkeypatch):
    calls = tmp_path / "calls.jsonl"
    paths = [str(STANDIN), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.setenv("STANDIN_CALLS", str(calls))
    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "0")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray starts: loopback
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    address = cluster.address
    driver = None
    try:
        path = manifest(tmp_path, "hold-a", "good-b", "broken-c", "flaky-d")
        driver = subprocess.Popen(
            [sys.executable, "-m", "magicapture_pipeline.batch", str(path), "--engine", "ray",
             "--address", address, "--workers", "2", "--retries", "2", "--threads", "1",
             "--project", str(project_copy), "--batch-id", "multi"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        held = []
        while not held:
            held = [c for c in _calls(calls) if c["concept"] == "hold-a"]
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "hold-a never started"
            time.sleep(0.5)
        [victim] = [n for n in workers if n.node_id == held[0]["node"]]
        survivor = next(n for n in workers if n is not victim)
        cluster.remove_node(victim, allow_graceful=False)  # the node is lost, processes and all
        output, _ = driver.communicate(timeout=300)
        assert driver.returncode == 1, output[-3000:]  # broken-c failed
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        cluster.shutdown()
    runs = [c for c in _calls(calls) if c["concept"] == "hold-a"]
    assert [(r["resume"], r["found"]) for r in runs] == [
        ([False, False], []),
        ([True, True], ["checkpoint-1"]),
    ]
    assert runs[1]["node"] == survivor.node_id != runs[0]["node"]
    summary = json.loads(
        (project_copy / "data" / "08_reporting" / "batch" / "multi.json").read_text()
    )
    by_name = {c["name"]: c for c in summary["concepts"]}
    assert by_name["hold-a"]["status"] == by_name["good-b"]["status"] == "succeeded"
    assert summary["engine_info"]["address"] == address
    # a failure on Ray: reported with its reason, not retried
    broken = by_name["broken-c"]
    assert (broken["status"], broken["attempts"]) == ("failed", 1), broken
    assert "no face found in source photo 3" in broken["reason"]
    assert "no face found in source photo 3" in output
    assert [c["concept"] for c in _calls(calls)].count("broken-c") == 1
    # a worker process killed on Ray: retried in a fresh process that resumes its checkpoint
    assert (by_name["flaky-d"]["status"], by_name["flaky-d"]["attempts"]) == ("succeeded", 2)
    first, second = [c for c in _calls(calls) if c["concept"] == "flaky-d"]
    assert first["pid"] != second["pid"]
    assert [(r["resume"], r["found"]) for r in (first, second)] == [
        ([False, False], []),
        ([True, True], ["checkpoint-1"]),
    ]
    assert (summary["succeeded"], summary["failed"]) == (3, 1)

