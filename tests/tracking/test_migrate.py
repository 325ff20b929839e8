"""Moving a local store onto another: runs with every metric step, artifacts, logged models,
registered versions with their tags and aliases. The target here is a second sqlite store (the
same client calls as a server); the tracking-server test migrates into PostgreSQL too."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from test_registry import GATES, MODEL, promote, register, tiny_concept_in

from magicapture_pipeline.tracking.migrate import MIGRATED_TAG, migrate


@pytest.fixture(scope="module")
def concept(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random SD and a concept for it: ``(base_model_dir, concept_dir)``."""
    return tiny_concept_in(tmp_path_factory.mktemp("concept"), tmp_path_factory)


def fill_source(tmp_path: Path, concept, sqlite_store) -> tuple[str, MlflowClient, str]:
    uri = sqlite_store(tmp_path / "source.db")  # the target below is created by migrate
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment(
        "magicapture-test",
        artifact_location=(tmp_path / "source-art").as_uri(),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )
    record = register((uri, client, experiment), concept, csim=0.6)
    for step in range(5):
        client.log_metric(record["run_id"], "stage_two/loss", 1.0 / (step + 1), step=step)
    client.log_param(record["run_id"], "stage_two.max_steps", "5")
    client.log_dict(record["run_id"], {"a": 1}, "reports/x.json")
    promote(client, MODEL, record["version"], GATES)
    return uri, client, record["run_id"]


def test_migrate_copies_runs_models_and_aliases(tmp_path, concept, monkeypatch, sqlite_store):
    source_uri, source, run_id = fill_source(tmp_path, concept, sqlite_store)
    target_uri = f"sqlite:///{tmp_path / 'target.db'}"
    counts = migrate(source_uri, target_uri)
    assert counts == {"experiments": 2, "runs": 1, "logged_models": 1, "model_versions": 1}
    target = MlflowClient(tracking_uri=target_uri, registry_uri=target_uri)
    experiment = target.get_experiment_by_name("magicapture-test")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [run] = target.search_runs([experiment.experiment_id])
    assert run.data.tags[MIGRATED_TAG] == run_id and run.info.status == "FINISHED"
    history = target.get_metric_history(run.info.run_id, "stage_two/loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [
        (s, round(1.0 / (s + 1), 3)) for s in range(5)
    ]
    assert run.data.params["stage_two.max_steps"] == "5"
    assert "reports/x.json" in {a.path for a in target.list_artifacts(run.info.run_id, "reports")}
    version = target.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["metric.csim_arcface"] == "0.6"
    assert version.run_id == run.info.run_id and version.source.startswith("models:/m-")
    # the champion loads from the target store alone and samples
    from magicapture_pipeline.serving.batch import load_registered

    monkeypatch.setenv("MAGICAPTURE_PROJECT_ROOT", str(concept[0].parent))
    (tmp_path / "source.db").rename(tmp_path / "gone.db")  # nothing read from the source now
    model = load_registered(f"models:/{MODEL}@champion", target_uri)
    out = model.predict(pd.DataFrame({"prompt": ["[V1]"], "seed": [1]}))
    assert out.loc[0, "seed"] == 1
