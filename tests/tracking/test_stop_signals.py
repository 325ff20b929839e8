"""Every stop closes its run (issue 21 §2): real processes, real signals, the real hooks.

A ``kedro run`` that gets SIGTERM (``timeout``, Slurm, Kubernetes) or SIGINT (Ctrl-C) ends its
MLflow run KILLED with the signal in ``stopped_by_signal``, gives the concept's lock back, leaves
its newest checkpoint complete, and still dies BY the signal. A second run of a running concept is
refused in one line naming the holder.
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
from mlflow import MlflowClient

from conftest import run_kedro
from magicapture_pipeline.concepts import ConceptLock

pytestmark = pytest.mark.integration
CHILD = Path(__file__).resolve().parents[1] / "stop_child.py"


def start_child(project: Path, concept: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
           "KEDRO_DISABLE_TELEMETRY": "1"}
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(project), concept], cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_checkpoint(process: subprocess.Popen, count: int = 3) -> list[str]:
    """Read the child's output until it printed ``checkpoint <count>``."""
    lines = []
    deadline = time.time() + 180
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip() == f"checkpoint {count}":
            return lines
    process.kill()
    pytest.fail("the child never reached its third checkpoint:\n" + "".join(lines[-40:]))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_kills_the_run_releases_the_lock_and_the_process_dies_by_it(
    project_copy, signum
):
    concept = f"stop-{signum.name.lower()}"
    process = start_child(project_copy, concept)
    wait_for_checkpoint(process)
    lock = project_copy / "data/.locks" / f"{concept}.lock"
    assert json.loads(lock.read_text())["pid"] == process.pid  # held while it runs
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    # dies BY the signal (exit status -15 / -2), as schedulers and the batch engines expect
    assert process.returncode == -signum, (process.returncode, output[-3000:])
    assert not lock.exists(), output[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{project_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"magicapture-{concept}")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED", output[-3000:]
    assert run.data.tags["stopped_by_signal"] == signum.name
    assert run.data.tags["error"] == f"RunStopped: stopped by {signum.name}"
    # the checkpoints so far are whole: each state.json parses, no half-written temporary left
    folder = project_copy / "data/06_models" / concept / "checkpoints"
    written = sorted(folder.iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert len(written) >= 3 and all(p.name.startswith("checkpoint-") for p in written)
    newest = json.loads((written[-1] / "state.json").read_text())
    assert newest == {"step": len(written)}
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name or ".old" in p.name]


def test_a_second_run_of_a_running_concept_is_refused_in_one_line(project_copy):
    holder = ConceptLock(project_copy, "held", note="the test holds it").acquire()
    try:
        done = run_kedro(project_copy, "run", "--pipelines=customize", "--env=demo",
                         "--params=concept=held", timeout=300)
    finally:
        holder.release()
    assert done.returncode == 1, done.stderr[-3000:]
    refused = [line for line in done.stderr.splitlines() if line.startswith("Run refused:")]
    assert refused == [
        line for line in done.stderr.splitlines() if "already running" in line
    ], done.stderr[-3000:]
    assert len(refused) == 1 and f"pid {os.getpid()} on " in refused[0], done.stderr[-3000:]
    assert "the test holds it" in refused[0] and "held.lock" in refused[0]
    assert "Traceback" not in done.stderr + done.stdout, (done.stderr + done.stdout)[-3000:]
