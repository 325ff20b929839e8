"""Issue 21 §6 in full: a batch of real demo concepts on a multi-node Ray cluster on this machine,
tracked on the PostgreSQL tracking server, one worker node killed mid-run.

``ray.cluster_utils.Cluster``: a head without CPUs (it runs no concept) and two worker nodes of one
CPU each, every port on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). Two identical concepts
(``steady``, ``killed``) run side by side, the real worker (a real Kedro session of the demo env,
shrunk by the manifest's params). When ``killed`` is in stage two past ``checkpoint-8``, its whole
node is removed without grace (raylet, workers and all). Ray retries the task on the surviving node,
it resumes from that checkpoint and ends with the very same exported tensors as ``steady``; on the
tracking server the lost attempt's run is KILLED and the retry's run FINISHED with every metric
``steady`` has.

This is also the suite's one Ray batch of real concepts: the local engine's end-to-end checks
(``test_batch.check_three_concepts``: summary, runs, registered versions, each concept trained on
its own photos, the batch's run) are made here on Ray, against the tracking server. Issue 17
merged the former ``test_batch.py`` Ray batch (local Ray beside a bystander cluster, a worker
SIGKILLed mid stage two, two more real concepts) into this test; where its checks went:

* ``steady``/``killed`` resume to the same weights, the dead attempt's run KILLED, two real
  concepts succeed and are tracked and registered, ``task_options`` (2 CPUs / 2 workers),
  ``ray_startup_s``: here;
* a failing concept on Ray is reported failed, never retried, and more concepts than workers
  queue: ``test_ray_cluster.py`` (stand-in sessions); the real photo failure's reason: the local
  batch (``test_batch.py``);
* a worker process SIGKILLed on Ray is retried and resumes its checkpoint: ``test_ray_cluster.py``
  (``flaky-d``);
* given no ``--address`` beside another cluster, the batch starts its own local Ray with this
  machine's CPUs: ``test_batch_stop_engines.py``'s Ray test.

It is also the suite's run of two concepts at once on a fresh PostgreSQL tracking server (session
9 merged ``test_tracking_server.py``'s two concurrent ``kedro run``s into it, two whole concept
runs less): both create their experiments and registered models on the server at the same
moment and build the tiny SD side by side; ``steady``'s run holds every logged step and metric,
its artifacts and its logged model (``check_concept_run``), the server started no MLflow job
runner, and the registered concept loads and samples through the server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from test_batch import (
    HEAD,
    KILL_AFTER,
    LONG_TWO,
    assert_killed_resumed_to_the_steady_weights,
    check_three_concepts,
    photo_set,
    summary_of,
)

from magicapture_pipeline.core import procfs
from magicapture_pipeline.tracking import server as tracking_server
from tracking_checks import check_concept_run, job_runners

pytestmark = [pytest.mark.integration, pytest.mark.service, pytest.mark.slow,
              pytest.mark.xdist_group("ray")]  # fmt: skip


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        fields = procfs.stat_fields(pid)
        if fields is None:
            break
        pid = int(fields[procfs.PPID])
    return seen


def _node_of(pid: int, nodes: list) -> object:
    """The Ray worker node whose raylet started process ``pid``."""
    chain = _ancestors(pid)
    [node] = [n for n in nodes if n.all_processes["raylet"][0].process.pid in chain]
    return node


@pytest.fixture
def tracking(monkeypatch):
    if tracking_server.pg_bin() is None:
        pytest.fail("PostgreSQL binaries not found: install Debian's `postgresql`")
    folder = Path(tempfile.mkdtemp(prefix="magicapture-tracking-"))
    folder.chmod(0o755)  # the cluster belongs to the postgres user when run as root
    state = tracking_server.start(folder, workers=1)  # three clients, a few calls a second
    try:
        yield state
    finally:
        tracking_server.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_node_lost_mid_run_on_a_cluster_with_the_tracking_server(project_copy, tmp_path,
                                                                   tracking, monkeypatch):
    server, tracking = tracking, tracking.tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)  # the drivers and every Ray worker
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray starts: loopback
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    from ray.cluster_utils import Cluster

    photos = str(photo_set(tmp_path / "photos", [0, 1]))
    concepts = {"concepts": [
        {"name": name, "source_dir": photos, "params": LONG_TWO} for name in ("steady", "killed")
    ]}  # fmt: skip
    manifest = project_copy / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(concepts))
    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    address = cluster.address
    driver = victim = None
    try:
        started = time.monotonic()
        driver = subprocess.Popen(
            [sys.executable, "-m", "magicapture_pipeline.batch", str(manifest), "--env", "demo",
             "--engine", "ray", "--address", address, "--workers", "2", "--retries", "2",
             "--threads", "1", "--project", str(project_copy), "--batch-id", "cluster"],
            cwd=project_copy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        state = project_copy / "data/08_reporting/batch/cluster/killed"
        checkpoint = project_copy / "data/06_models/killed/checkpoints/stage_two" / (
            f"checkpoint-{KILL_AFTER}"
        )
        deadline = time.monotonic() + 1500
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            if checkpoint.exists() and (state / "progress.json").is_file():
                progress = yaml.safe_load((state / "progress.json").read_text())
                if progress.get("stage") == "train_stage_two":
                    victim = _node_of(progress["pid"], nodes)
                    cluster.remove_node(victim, allow_graceful=False)  # the node is lost
            time.sleep(0.05)
        output, _ = driver.communicate(timeout=1500)
        elapsed = time.monotonic() - started
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        cluster.shutdown()
    assert victim is not None, "stage two ended before the node could be killed:\n" + output[-3000:]
    assert driver.returncode == 0, output[-4000:]
    summary = summary_of(project_copy)
    by_name = {c["name"]: c for c in summary["concepts"]}
    assert (by_name["killed"]["attempts"], by_name["steady"]["attempts"]) == (2, 1)
    assert summary["engine_info"]["address"] == address
    # the local batch's end-to-end checks, on Ray and the tracking server (both succeed)
    check_three_concepts(project_copy, concepts, output, "ray", 2,
                         {"steady": (2, 1), "killed": (2, 2)}, broken=False, tracking_uri=tracking,
                         elapsed=elapsed)
    assert 0 < summary["engine_info"]["ray_startup_s"] < summary["wall_s"]
    assert summary["engine_info"]["task_options"] == {"num_cpus": 1}  # 2 CPUs / 2 workers
    assert_killed_resumed_to_the_steady_weights((state / "worker.log").read_text(), by_name)
    # nothing lost on the tracking server
    client = MlflowClient(tracking_uri=tracking)
    runs = {}
    for name in ("steady", "killed"):
        experiment = client.get_experiment_by_name(f"magicapture-{name}")
        runs[name] = sorted(client.search_runs([experiment.experiment_id]),
                            key=lambda r: r.info.start_time)  # fmt: skip
    assert [r.info.status for r in runs["steady"]] == ["FINISHED"]
    lost, retry = runs["killed"]
    assert (lost.info.status, retry.info.status) == ("KILLED", "FINISHED")
    assert retry.info.run_id == by_name["killed"]["mlflow_run_id"]
    [steady_run] = runs["steady"]
    assert set(retry.data.metrics) == set(steady_run.data.metrics)
    assert len(steady_run.data.metrics) >= 10, sorted(steady_run.data.metrics)
    check_concept_run(client, project_copy, "steady")
    # the server runs no MLflow job runner (tracking.server.JOBS_ENV): after the concept runs
    # against it, no huey consumer in its session (MLflow 3's default would have six)
    assert job_runners(server.mlflow_pid) == [], "mlflow server started a job runner"
    # the registered concept loads through the server (artifacts over mlflow-artifacts:/)
    from magicapture_pipeline.serving.batch import load_registered

    monkeypatch.setenv("MAGICAPTURE_PROJECT_ROOT", str(project_copy))
    model = load_registered("models:/magicapture-steady@candidate", tracking)
    out = model.predict(pd.DataFrame({"prompt": ["a photo of a [V1] person"], "seed": [1]}))
    assert out.loc[0, "seed"] == 1 and len(out.loc[0, "image"]) > 100
