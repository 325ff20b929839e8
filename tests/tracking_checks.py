"""Checks of concept runs on a tracking server (the tracking-server and Ray cluster tests)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from magicapture_pipeline.core import procfs


def job_runners(session: int) -> list[str]:
    """Command lines of the Huey job consumers in process session ``session``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        fields = procfs.stat_fields(proc.name)
        if fields is None or int(fields[procfs.SESSION]) != session:
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "huey" in command:
            found.append(command)
    return found


def only_run(client: MlflowClient, concept: str):
    experiment = client.get_experiment_by_name(f"magicapture-{concept}")
    assert experiment is not None, f"no experiment for {concept}"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [run] = client.search_runs([experiment.experiment_id])
    return run


def check_concept_run(client: MlflowClient, project: Path, concept: str) -> None:
    """FINISHED, every loss step and metric there, artifacts served, the version registered."""
    run = only_run(client, concept)
    assert run.info.status == "FINISHED"
    assert run.data.tags["kedro.pipelines"] == "customize"
    history = pd.read_csv(project / "data/08_reporting" / concept / "stage_two_history.csv")
    logged = client.get_metric_history(run.info.run_id, "stage_two/loss")
    assert len(logged) == len(history) > 1  # every step, none lost
    metrics = pd.read_json(project / "data/08_reporting" / concept / "metrics.json", typ="series")
    numeric = {
        k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    assert numeric <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"images", "reports"} <= artifacts
    version = client.get_model_version_by_alias(f"magicapture-{concept}", "candidate")
    assert version.run_id == run.info.run_id and version.source.startswith("models:/m-")
    [model] = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert model.source_run_id == run.info.run_id
