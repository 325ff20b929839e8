"""What a batch (``make batch``, ``batch/``) asks of MLflow: its summary run and its concepts' runs.

* :func:`log_summary_run`: one run in ``magicapture-batches`` per batch, whose artifact is the
  summary JSON, with one status tag (and run id) per concept;
* :func:`mark_dead_runs`: a retried concept's earlier runs, left RUNNING by a worker that died, are
  marked KILLED;
* :func:`session_run_id`: the MLflow run of one Kedro session (tag ``kedro.run_id``).

The batch code itself touches no MLflow: it passes ``params:tracking`` and the project here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from magicapture_pipeline.tracking.logged import BATCH_ID_TAG
from magicapture_pipeline.tracking.store import tracking_client
from magicapture_pipeline.tracking.uris import (
    resolve_tracking_uri,
    tracking_disabled_by_env,
    tracking_section,
)

SUMMARY_EXPERIMENT = "magicapture-batches"


def log_summary_run(summary: dict[str, Any], summary_file: Path, tracking_uri: str) -> str:
    """One MLflow run in ``magicapture-batches`` whose artifact is the summary; returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    client = tracking_client(tracking_uri)
    experiment = client.get_experiment_by_name(SUMMARY_EXPERIMENT)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(SUMMARY_EXPERIMENT)
    )
    run = client.create_run(
        experiment_id, run_name=summary["batch_id"],
        tags={BATCH_ID_TAG: summary["batch_id"], "mlflow.source.name": "make batch"},
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, str(summary[k])) for k in ("engine", "workers", "env", "manifest")]
    metrics = [Metric(k, float(summary[k]), now, 0) for k in ("wall_s", "succeeded", "failed")]
    tags = []
    for concept in summary["concepts"]:
        tags.append(RunTag(f"concept.{concept['name']}.status", str(concept["status"])))
        if concept.get("mlflow_run_id"):
            tags.append(RunTag(f"concept.{concept['name']}.run_id", concept["mlflow_run_id"]))
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags[:100])
    client.log_artifact(run_id, str(summary_file))
    status = "FINISHED" if summary["failed"] == 0 else "FAILED"
    client.set_terminated(run_id, status="KILLED" if summary.get("stopped_by") else status)
    return run_id


def _experiment(params: Mapping[str, Any], project: Path) -> tuple[Any, str] | None:
    """A client and the concept runs' experiment id, or None (tracking off, no experiment yet)."""
    tracking = tracking_section(params)
    if tracking_disabled_by_env() or tracking.get("enabled") is False:
        return None
    client = tracking_client(resolve_tracking_uri(project, tracking.get("tracking_uri")))
    experiment = client.get_experiment_by_name(tracking.get("experiment_name") or "")
    return (client, experiment.experiment_id) if experiment else None


def mark_dead_runs(params: Mapping[str, Any], project: Path, batch_id: str) -> None:
    """Runs of this batch left RUNNING by a worker that died are KILLED, not forever RUNNING."""
    found = _experiment(params, project)
    if found is None:
        return
    client, experiment_id = found
    query = f"tags.`{BATCH_ID_TAG}` = '{batch_id}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], filter_string=query):
        client.set_terminated(run.info.run_id, status="KILLED")


def session_run_id(params: Mapping[str, Any], project: Path, session_id: str) -> str | None:
    """The MLflow run id of Kedro session ``session_id``, or None (not tracked)."""
    found = _experiment(params, project)
    if found is None:
        return None
    client, experiment_id = found
    query = f"tags.`kedro.run_id` = '{session_id}'"
    runs = client.search_runs([experiment_id], filter_string=query)
    return runs[0].info.run_id if runs else None
