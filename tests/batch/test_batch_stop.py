"""SIGTERM to the batch driver (issue 21 §2): it stops its worker (whose run ends KILLED and whose
lock is released), writes the summary with the concept marked ``stopped``, and dies by SIGTERM.
A real driver, a real worker process, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from magicapture_pipeline.core import procfs

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LONG = {  # validation off: the demo's every 40 steps exceeds this stage two
    "stage_one": {"max_steps": 400, "checkpoint_every": 1, "validation": {"every_n_steps": 0}},
    "stage_two": {"max_steps": 4, "checkpoint_every": 2, "heatmap_every": 2,
                  "validation": {"every_n_steps": 0}},
    "generation": {"images_per_prompt": 1, "num_inference_steps": 2},
    "postprocess": {"super_resolution": {"enabled": False}},
}


def test_sigterm_to_the_driver_stops_the_worker_and_writes_the_summary(project_copy):
    manifest = project_copy / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"concepts": [{"name": "alice", "params": LONG}]}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project_copy / 'mlflow.db'}",
           "KEDRO_DISABLE_TELEMETRY": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "magicapture_pipeline.batch", str(manifest), "--env", "demo",
         "--project", str(project_copy), "--engine", "local", "--threads", "1",
         # the worker must close its run by itself here (the grace running out is the hang
         # test's, test_batch_stop_engines): in a full run at load 7 it took over the default 30 s
         "--stop-grace-s", "240"],
        cwd=project_copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    batch = project_copy / "data/08_reporting/batch"
    checkpoints = project_copy / "data/06_models/alice"
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None:
        if list(checkpoints.rglob("checkpoint-2")):  # stage one is training: hooks are armed
            break
        time.sleep(0.2)
    else:
        driver.kill()
        pytest.fail("the worker never reached stage one's second checkpoint:\n"
                    + driver.communicate()[0][-3000:])
    pid = json.loads(next(batch.glob("*/alice/worker.json")).read_text())["pid"]
    driver.send_signal(signal.SIGTERM)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == -signal.SIGTERM, output[-3000:]
    fields = procfs.stat_fields(pid)  # gone, or dead and not yet reaped
    assert fields is None or procfs.is_zombie(fields), fields
    [summary_file] = batch.glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["stopped"] == 1, summary
    [concept] = summary["concepts"]
    assert concept["status"] == "stopped" and "stopped by SIGTERM" in concept["reason"]
    assert "killed by SIGTERM" in concept["reason"] and concept["attempts"] == 1
    assert not (project_copy / "data/.locks/alice.lock").exists()
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("magicapture-alice").experiment_id])
    assert [(r.info.status, r.data.tags.get("stopped_by_signal")) for r in runs] == [
        ("KILLED", "SIGTERM")
    ]
    assert "STOPPED alice" in output
