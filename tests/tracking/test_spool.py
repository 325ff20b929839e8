"""A tracking-server outage never loses data silently (issue 21 §3): a real ``mlflow server``
process is killed in the middle of a tracked run and started again.

The run keeps going while the server is away (its calls wait in the spool), is not FINISHED on the
server while data is missing, and ``python -m magicapture_pipeline.tracking.spool sync`` delivers
everything afterwards and ends it FINISHED with ``tracking.complete = true``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset
from mlflow import MlflowClient

from magicapture_pipeline.tracking import spool
from magicapture_pipeline.tracking.hook import MlflowTrackingHook
from magicapture_pipeline.tracking.logged import UNAVAILABLE_ARTIFACT
from magicapture_pipeline.tracking.server import free_port, server_environment

pytestmark = [pytest.mark.service, pytest.mark.slow]
MLFLOW = Path(sys.executable).parent / "mlflow"


class Server:
    """``mlflow server`` on 127.0.0.1 over a sqlite store that survives restarts."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [str(MLFLOW), "server", "--backend-store-uri",
                   f"sqlite:///{self.folder / 'store.db'}", "--artifacts-destination",
                   (self.folder / "artifacts").as_uri(), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the server's lifetime
        env = server_environment(MLFLOW)
        self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env,
                                        start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.kill()
        pytest.fail("mlflow server did not start:\n" + (self.folder / "server.log").read_text())

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One ``mlflow server`` (and store) for the module: each start costs several CPU seconds,
    and each test kills and restarts it anyway (the tests log to experiments of their own)."""
    running = Server(tmp_path_factory.mktemp("server"))
    yield running
    running.kill()


@pytest.fixture
def server(module_server: Server) -> Server:
    """The module's server, running (started again if a test before left it dead)."""
    if not module_server.running():
        module_server.start()
    return module_server


def history(parameters: dict) -> pd.DataFrame:
    return pd.DataFrame({"step": [0, 1, 2], "loss": [0.9, 0.5, 0.3]})


def run_with_outage(
    folder: Path, server: Server, experiment: str
) -> tuple[MlflowTrackingHook, float]:
    """Log a history, kill the server, log metrics and a report (the hook as Kedro calls it), in
    the MLflow experiment ``experiment``."""

    def outage(frame: pd.DataFrame) -> int:
        server.kill()
        return len(frame)

    def metrics(rows: int) -> dict:
        return {"csim": 0.25, "clip_style": 0.5, "rows": rows,
                "unavailable": {"aesthetic": "no weights here"}}

    def report(rows: int) -> dict:
        return {"faces": rows}

    pipeline = Pipeline([
        Node(history, "parameters", "stage_one_history", name="history"),
        Node(outage, "stage_one_history", "rows", name="outage"),
        Node(metrics, "rows", "metrics", name="metrics"),
        Node(report, "rows", "validation_report", name="report"),
    ])
    catalog = DataCatalog(datasets={
        "stage_one_history": CSVDataset(filepath=str(folder / "history.csv")),
        "rows": MemoryDataset(),
        "metrics": JSONDataset(filepath=str(folder / "metrics.json")),
        "validation_report": JSONDataset(filepath=str(folder / "report.json")),
    })
    catalog["parameters"] = {"tracking": {"experiment_name": experiment}}
    hook = MlflowTrackingHook()
    manager = _create_hook_manager()
    manager.register(hook)
    run_params = {"run_id": "outage", "project_path": str(folder), "env": "test",
                  "pipeline_names": ["toy"], "kedro_version": "1.7.0"}
    began = time.time()
    manager.hook.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
    result = SequentialRunner().run(pipeline, catalog, manager)
    manager.hook.after_pipeline_run(run_params=run_params, run_result=result, pipeline=pipeline,
                                    catalog=catalog)
    return hook, time.time() - began


def test_killed_server_spools_the_run_and_sync_delivers_it(tmp_path, server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.delenv("MAGICAPTURE_MLFLOW", raising=False)
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    project = tmp_path / "project"
    project.mkdir()
    client = MlflowClient(tracking_uri=server.uri)
    _, seconds = run_with_outage(project, server, "magicapture-outage")
    assert seconds < 60, f"the run waited {seconds:.0f} s for a dead server"
    [spooled] = (project / spool.SPOOL_DIR).glob("*.jsonl")
    calls = [json.loads(line)["call"] for line in spooled.read_text().splitlines()[1:]]
    assert calls[-1] == "set_terminated" and calls.count("log_batch") >= 2, calls

    # the test's own reads may wait for a server slowed by a busy machine
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    server.start()  # back, on the same store: the run is not FINISHED while data is missing
    experiment = client.get_experiment_by_name("magicapture-outage")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "RUNNING"
    assert "csim" not in run.data.metrics and len(client.get_metric_history(
        run.info.run_id, "stage_one/loss")) == 3

    done = subprocess.run(
        [sys.executable, "-m", "magicapture_pipeline.tracking.spool", "sync", "--dir",
         str(project / spool.SPOOL_DIR)], capture_output=True, text=True, timeout=120,
        check=False, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run {run.info.run_id}: {len(calls)} call(s) delivered" in done.stdout
    assert not spooled.exists()
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["csim"] == 0.25 and run.data.metrics["clip_style"] == 0.5
    assert run.data.tags[spool.COMPLETE_TAG] == "true"
    assert int(run.data.tags[spool.SPOOLED_TAG]) == len(calls) - 2  # less its own tag and end
    # files too: the unavailable-parts JSON (log_dict) and the report (log_artifact)
    files = {item.path for item in client.list_artifacts(run.info.run_id)}
    files |= {item.path for item in client.list_artifacts(run.info.run_id, "reports")}
    assert {UNAVAILABLE_ARTIFACT, "reports/report.json"} <= files, files


def test_a_full_spool_drops_and_the_run_ends_failed_never_finished(tmp_path, server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.delenv("MAGICAPTURE_MLFLOW", raising=False)
    monkeypatch.setattr(spool, "MAX_SPOOL_BYTES", 400)  # room for the header and one call
    project = tmp_path / "project"
    project.mkdir()
    hook, _ = run_with_outage(project, server, "magicapture-outage-full")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    server.start()
    [spooled] = (project / spool.SPOOL_DIR).glob("*.jsonl")
    assert spool.sync(project / spool.SPOOL_DIR) == 0
    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("magicapture-outage-full")
    [run] = client.search_runs([experiment.experiment_id])
    assert not spooled.exists()
    # the bound dropped calls, the run's end was kept: FAILED and saying so, never FINISHED
    assert hook.active_run_id is None
    assert run.info.status == "FAILED"
    assert run.data.tags[spool.COMPLETE_TAG] == "false"
    assert "dropped: the spool was full" in run.data.tags["error"]
