"""The MLflow tracking hook: one run per Kedro run, what it logs, FAILED runs, robustness.

Fast tests drive the hook on a small self-made pipeline (real Kedro datasets, SequentialRunner, the
hook registered on a hook manager), so they do not depend on the training pipelines. The slow test
runs the real ``customize`` chain in a copy of the project. A real failing ``kedro run`` (FAILED,
the error and its node as tags, the champion untouched) is checked by the refused promotion of
``tests/serving/test_registry.py::test_promote_and_rollback_from_the_command_line``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner, ThreadRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset
from kedro_datasets.partitions import PartitionedDataset
from mlflow import MlflowClient
from PIL import Image

from magicapture_pipeline.tracking.catalog import RUN_DATASET, dataset_path
from magicapture_pipeline.tracking.hook import MlflowTrackingHook
from magicapture_pipeline.tracking.logged import flatten, option_tags

PARAMETERS = {
    "tracking": {"experiment_name": "magicapture-toy"},
    "stage_one": {"steps": 3, "lr": 0.005, "prompt": "x" * 7000, "tokens": {"person": "<v1>"}},
    "registry": {"model_name": "magicapture-toy"},
}


def make_history(stage_one: dict[str, Any]) -> pd.DataFrame:
    steps = range(stage_one["steps"])
    return pd.DataFrame(
        {
            "step": list(steps),
            "loss": [1.0 / (s + 1) for s in steps],
            "loss_attention": [0.1 * s for s in steps],
            "lr": [stage_one["lr"]] * len(steps),
            "task": ["source"] * len(steps),
        }
    )


def make_overlays(history: pd.DataFrame) -> dict[str, Image.Image]:
    return {f"source/img{i}": Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)}


def make_concept(history: pd.DataFrame) -> dict[str, Any]:
    return {"tokens": ["<v1>", "<v2>"], "identity": {"weight": 0.0, "backend": "dlib"}}


def make_metrics(concept: dict[str, Any], mlflow_run: dict[str, Any]) -> dict[str, Any]:
    return {
        "csim": 0.42,
        "clip_style": 0.3,
        "n_images": 4,
        "unavailable": {"aesthetic": "LAION weights not installed"},
        "run": mlflow_run["run_id"],
    }


def explode(metrics: dict[str, Any]) -> None:
    raise RuntimeError("boom in the middle of training")


def toy_pipeline(fail: bool = False) -> Pipeline:
    nodes = [
        Node(make_history, "params:stage_one", "stage_one_history", name="make_history"),
        Node(make_overlays, "stage_one_history", "mask_overlays", name="make_overlays"),
        Node(make_concept, "stage_one_history", "concept", name="make_concept"),
        Node(make_metrics, ["concept", RUN_DATASET], "metrics", name="make_metrics"),
    ]
    if fail:
        nodes.append(Node(explode, "metrics", "nothing", name="explode"))
    return Pipeline(nodes)


def toy_catalog(folder: Path) -> DataCatalog:
    catalog = DataCatalog(
        datasets={
            "stage_one_history": CSVDataset(filepath=str(folder / "stage_one_history.csv")),
            "mask_overlays": PartitionedDataset(
                path=str(folder / "mask_overlays"),
                dataset={"type": "pillow.ImageDataset"},
                filename_suffix=".png",
            ),
            "concept": JSONDataset(filepath=str(folder / "concept" / "concept.json")),
            "metrics": JSONDataset(filepath=str(folder / "metrics.json")),
        }
    )
    catalog["parameters"] = PARAMETERS
    for key, value in PARAMETERS.items():
        catalog[f"params:{key}"] = value
    return catalog


def run_toy(folder: Path, fail: bool = False, runner=None) -> tuple[MlflowTrackingHook, Any]:
    """Run the toy pipeline the way a KedroSession does: pipeline hooks around runner.run."""
    hook = MlflowTrackingHook()
    manager = _create_hook_manager()
    manager.register(hook)
    catalog = toy_catalog(folder)
    pipeline = toy_pipeline(fail)
    run_params = {
        "run_id": "2026-11-25T10.00.00.000Z",
        "project_path": str(folder),
        "env": "test",
        "pipeline_names": ["toy"],
        "kedro_version": "1.7.0",
        "runner": "SequentialRunner",
    }
    manager.hook.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
    try:
        result = (runner or SequentialRunner()).run(pipeline, catalog, manager)
    except Exception as error:
        manager.hook.on_pipeline_error(
            error=error, run_params=run_params, pipeline=pipeline, catalog=catalog
        )
        raise
    manager.hook.after_pipeline_run(
        run_params=run_params, run_result=result, pipeline=pipeline, catalog=catalog
    )
    return hook, catalog


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_store) -> MlflowClient:
    uri = sqlite_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MAGICAPTURE_MLFLOW", raising=False)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def only_run(client: MlflowClient, experiment: str = "magicapture-toy"):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    assert len(runs) == 1
    return runs[0]


def artifact_files(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    files: set[str] = set()
    for item in client.list_artifacts(run_id, path or None):
        files |= artifact_files(client, run_id, item.path) if item.is_dir else {item.path}
    return files


def test_flatten_and_options():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}
    tags = option_tags(
        "metrics",
        {"csim": 0.1, "unavailable": {"aesthetic": "no weights"}, "backends": {"identity": "dlib"}},
    )
    assert tags["magicapture.unavailable"] == "aesthetic"  # names only; reasons: a JSON artifact
    assert not any(k.startswith("magicapture.unavailable.") for k in tags)
    assert tags["magicapture.metrics.backends.identity"] == "dlib"
    assert option_tags("concept", {"identity_weight": 0.0})["magicapture.identity_loss"] == "off"
    assert option_tags("concept", {"identity_weight": 0.5})["magicapture.identity_loss"] == "on"
    concept = {
        "identity_loss": {"enabled": False, "reason": "no arcface checkpoint"},
        "attention_refocusing": {"enabled": True, "weight": 0.01},
    }
    tags = option_tags("concept", concept)
    assert tags["magicapture.identity_loss"] == "off"
    assert tags["magicapture.concept.identity_loss.reason"] == "no arcface checkpoint"
    assert tags["magicapture.concept.attention_refocusing.enabled"] == "True"


def _git_commit_in(folder: Path) -> str:
    """Make ``folder`` a git repository with one commit; its hash."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, check=True)  # fmt: skip
        return done.stdout.strip()

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "t")
    return git("rev-parse", "HEAD")


def test_one_finished_run_with_params_losses_metrics_and_images(tmp_path, tracking):
    commit = _git_commit_in(tmp_path)  # the project's commit, not the fallback "unknown"
    hook, catalog = run_toy(tmp_path)
    run = only_run(tracking)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["stage_one.steps"] == "3" and params["stage_one.tokens.person"] == "<v1>"
    assert len(params["stage_one.prompt"]) == 6000  # cut to MLflow's limit, not rejected
    history = tracking.get_metric_history(run.info.run_id, "stage_one/loss_attention")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert "stage_one/task" not in run.data.metrics
    assert run.data.metrics["csim"] == pytest.approx(0.42)
    assert "run" not in run.data.metrics  # strings are not metrics
    tags = run.data.tags
    assert tags["kedro.env"] == "test" and tags["kedro.pipelines"] == "toy"
    assert tags["kedro.run_id"] == "2026-11-25T10.00.00.000Z"
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == commit
    assert tags["magicapture.identity_loss"] == "off"
    assert tags["magicapture.concept.identity.backend"] == "dlib"
    assert tags["magicapture.unavailable"] == "aesthetic"
    reasons = tracking.download_artifacts(run.info.run_id, "reports/unavailable.json", tmp_path)
    assert json.loads(Path(reasons).read_text()) == {"aesthetic": "LAION weights not installed"}
    experiment = tracking.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    files = artifact_files(tracking, run.info.run_id)
    assert {f"images/mask_overlays/source/img{i}.png" for i in range(3)} <= files
    assert {"reports/metrics.json", "reports/stage_one_history.csv"} <= files
    # the register node's handle on the run: the same run id, through the catalog
    assert json.loads((tmp_path / "metrics.json").read_text())["run"] == run.info.run_id
    assert hook.active_run_id is None


def test_thread_runner_logs_to_the_same_run(tmp_path, tracking):
    run_toy(tmp_path, runner=ThreadRunner(max_workers=2))
    run = only_run(tracking)
    assert len(tracking.get_metric_history(run.info.run_id, "stage_one/loss")) == 3
    assert run.data.metrics["csim"] == pytest.approx(0.42)


def test_disabled_by_env_var_logs_nothing(tmp_path, tracking, monkeypatch):
    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "0")
    run_toy(tmp_path)
    assert tracking.get_experiment_by_name("magicapture-toy") is None
    assert json.loads((tmp_path / "metrics.json").read_text())["run"] is None


def test_broken_tracking_store_never_kills_the_run(tmp_path, monkeypatch, caplog):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
    monkeypatch.delenv("MAGICAPTURE_MLFLOW", raising=False)
    run_toy(tmp_path)
    assert (tmp_path / "metrics.json").is_file()
    assert "MLflow tracking" in caplog.text


def test_dataset_path_finds_files_and_folders(tmp_path):
    catalog = toy_catalog(tmp_path)
    assert dataset_path(catalog, "metrics") == tmp_path / "metrics.json"
    assert dataset_path(catalog, "mask_overlays") == tmp_path / "mask_overlays"
    assert dataset_path(catalog, "params:stage_one") is None
    assert dataset_path(catalog, "missing") is None


EXPECTED_IMAGES = ("images/mask_overlays", "images/attention_heatmaps", "images/samples")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("demo_run")
def test_demo_customize_run_is_tracked_and_registered(demo_run):
    project_copy, done = demo_run
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{project_copy / 'mlflow.db'}")
    run = only_run(client, "magicapture-demo")
    assert run.info.status == "FINISHED"
    assert run.data.tags["kedro.env"] == "demo"
    assert run.data.tags["kedro.pipelines"] == "customize"
    assert any(k.startswith("stage_one.") for k in run.data.params)
    for stage in ("stage_one", "stage_two"):
        losses = [k for k in run.data.metrics if k.startswith(f"{stage}/loss")]
        assert losses, f"no {stage} loss logged"
        assert len(client.get_metric_history(run.info.run_id, losses[0])) > 1
    metrics = json.loads((project_copy / "data/08_reporting/demo/metrics.json").read_text())
    numeric = {k for k, v in metrics.items() if isinstance(v, int | float)}
    assert numeric <= set(run.data.metrics)
    files = artifact_files(client, run.info.run_id)
    for folder in EXPECTED_IMAGES:
        assert any(f.startswith(folder) and f.endswith(".png") for f in files), folder
    assert "reports/validation_report.json" in files
    reports = project_copy / "data/08_reporting/demo"
    registered = json.loads((reports / "registered_model.json").read_text())
    assert registered["registered"] is True and registered["run_id"] == run.info.run_id
    version = client.get_model_version_by_alias("magicapture-demo", "candidate")
    assert int(version.version) == registered["version"]
