"""Copy a local MLflow store (``sqlite:///mlflow.db`` + ``mlartifacts/``) onto a tracking server.

MLflow has no copy command, so this walks the source store with one client and re-creates it with
another: every experiment (name, tags), every run (status, times, parameters, the full history of
every metric, tags, artifacts), every logged model (name, source run, artifacts), and every
registered model with its versions (tags, source logged model or run) and aliases.
``python -m magicapture_pipeline.tracking.migrate --from sqlite:///mlflow.db --to http://127.0.0.1:5002``

What changes: ids. Runs, experiments and logged models get new ids on the server; a run's old id is
kept in its tag ``magicapture.migrated_from``, and version numbers follow the source order (a
version deleted in the source leaves no gap). Not copied: traces, datasets/inputs, prompts,
deleted runs and experiments. Run it once into an empty server: a second run copies everything
again (experiments are reused by name, runs are not deduplicated).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType

MIGRATED_TAG = "magicapture.migrated_from"


def _copy_artifacts(source: MlflowClient, target: MlflowClient, run_id: str, new_id: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if not source.list_artifacts(run_id):
            return
        local = source.download_artifacts(run_id, "", tmp)
        target.log_artifacts(new_id, local)


def _copy_run(source: MlflowClient, target: MlflowClient, run: Any, experiment_id: str) -> str:
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.log-model")}
    tags[MIGRATED_TAG] = run.info.run_id
    new = target.create_run(
        experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
    )
    new_id = new.info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in source.get_metric_history(run.info.run_id, key)
    ]
    target.log_batch(new_id, metrics=metrics, params=params)
    _copy_artifacts(source, target, run.info.run_id, new_id)
    target.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
    return new_id


def _copy_logged_models(
    source: MlflowClient,
    target: MlflowClient,
    experiment_id: str,
    new_experiment: str,
    run_ids: dict[str, str],
    source_uri: str,
) -> dict[str, str]:
    import mlflow.artifacts

    from magicapture_pipeline.tracking.uris import tracking

    ids: dict[str, str] = {}
    for model in source.search_logged_models(experiment_ids=[experiment_id]):
        created = target.create_logged_model(
            new_experiment,
            name=model.name,
            source_run_id=run_ids.get(model.source_run_id or ""),
            tags=dict(model.tags or {}),
            params=dict(model.params or {}),
        )
        with tempfile.TemporaryDirectory() as tmp, tracking(source_uri):
            local = mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=tmp)
            target.log_model_artifacts(created.model_id, local)
        target.finalize_logged_model(created.model_id, "READY")
        ids[model.model_id] = created.model_id
    return ids


def migrate(source_uri: str, target_uri: str) -> dict[str, int]:
    """Copy everything described in the module docstring; returns counts of what was copied."""
    from magicapture_pipeline.tracking.uris import tracking

    source = MlflowClient(tracking_uri=source_uri, registry_uri=source_uri)
    target = MlflowClient(tracking_uri=target_uri, registry_uri=target_uri)
    counts = {"experiments": 0, "runs": 0, "logged_models": 0, "model_versions": 0}
    run_ids: dict[str, str] = {}
    model_ids: dict[str, str] = {}
    for experiment in source.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        existing = target.get_experiment_by_name(experiment.name)
        new_experiment = (
            existing.experiment_id
            if existing is not None
            else target.create_experiment(experiment.name, tags=dict(experiment.tags))
        )
        counts["experiments"] += 1
        runs = source.search_runs(
            [experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=50000
        )
        for run in sorted(runs, key=lambda r: r.info.start_time or 0):
            run_ids[run.info.run_id] = _copy_run(source, target, run, new_experiment)
            counts["runs"] += 1
        copied = _copy_logged_models(
            source, target, experiment.experiment_id, new_experiment, run_ids, source_uri
        )
        model_ids.update(copied)
        counts["logged_models"] += len(copied)
    with tracking(target_uri):
        for registered in source.search_registered_models():
            try:
                target.create_registered_model(
                    registered.name, tags=dict(registered.tags), description=registered.description
                )
            except Exception:  # noqa: BLE001 - it exists on the server already
                pass
            versions = source.search_model_versions(f"name='{registered.name}'")
            numbers: dict[str, str] = {}
            for version in sorted(versions, key=lambda v: int(v.version)):
                old_model = version.source.removeprefix("models:/")
                new_model = model_ids.get(old_model)
                created = target.create_model_version(
                    registered.name,
                    source=f"models:/{new_model}" if new_model else version.source,
                    run_id=run_ids.get(version.run_id or ""),
                    tags=dict(version.tags),
                    description=version.description,
                    model_id=new_model,
                )
                numbers[str(version.version)] = str(created.version)
                counts["model_versions"] += 1
            # search results carry no aliases: read them from the registered model
            aliases = source.get_registered_model(registered.name).aliases or {}
            for alias, number in aliases.items():
                target.set_registered_model_alias(registered.name, alias, numbers[str(number)])
    return counts


def main(argv: list[str] | None = None) -> None:
    """``--from SOURCE_URI --to TARGET_URI``."""
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.tracking.migrate")
    parser.add_argument("--from", dest="source", required=True, help="e.g. sqlite:///mlflow.db")
    parser.add_argument("--to", dest="target", required=True, help="e.g. http://127.0.0.1:5002")
    args = parser.parse_args(argv)
    print(json.dumps(migrate(args.source, args.target), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
