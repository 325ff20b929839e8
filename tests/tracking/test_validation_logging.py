"""Validation images and metrics reach a real MLflow store with their steps (issue 20)."""

from __future__ import annotations

from PIL import Image

from magicapture_pipeline.tracking.validation import log_validation


def test_images_and_metrics_are_logged_with_their_step(tmp_path, sqlite_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sqlite_store(tmp_path / "mlflow.db"))
    experiment = client.create_experiment("v", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    history = [
        {"step": 10, "csim_arcface_heldout": 0.3, "best_step": 10, "reason": "eligible"},
        {"step": 20, "csim_arcface_heldout": 0.5, "best_step": 20, "reason": "eligible"},
    ]
    images = {
        10: {"grid": Image.new("RGB", (8, 8), (10, 0, 0))},
        20: {"grid": Image.new("RGB", (8, 8), (0, 20, 0))},
    }
    assert log_validation(client, run_id, "stage_two/validation", history, images) == 2
    client.set_terminated(run_id)
    metric = client.get_metric_history(run_id, "stage_two/validation/csim_arcface_heldout")
    assert [(m.step, m.value) for m in metric] == [(10, 0.3), (20, 0.5)]
    files = [f.path for f in client.list_artifacts(run_id, "images")]
    steps = sorted(p for p in files if p.endswith(".png"))
    assert len(steps) == 2
    assert [p.split("+step+")[1].split("+")[0] for p in steps] == ["10", "20"], steps
    assert all("stage_two~validation~grid" in p for p in steps)


def _store(tmp_path, sqlite_store):
    from mlflow.tracking import MlflowClient

    uri = sqlite_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("v", artifact_location=(tmp_path / "art").as_uri())
    return uri, client, client.create_run(experiment).info.run_id


def _steps(client, run_id: str, name: str) -> list[str]:
    files = sorted(f.path for f in client.list_artifacts(run_id, "images") if name in f.path)
    return [p.split("+step+")[1].split("+")[0] for p in files if p.endswith(".png")]


def test_the_hook_logs_validation_partitions_and_the_exported_step(tmp_path, sqlite_store):
    """The Kedro hook's path, through the spooling client it wraps every run's client in."""
    import pandas as pd

    from magicapture_pipeline.config.tracking import TrackingConfig
    from magicapture_pipeline.tracking.hook import MlflowTrackingHook, _ActiveRun
    from magicapture_pipeline.tracking.spool import SpoolingClient

    uri, client, run_id = _store(tmp_path, sqlite_store)
    hook = MlflowTrackingHook()
    spooling = SpoolingClient(client, run_id, tmp_path / "spool", uri)
    hook._run = _ActiveRun(spooling, run_id, "0", uri, TrackingConfig(), catalog=None)
    partitions = {f"step_{s:06d}/grid": Image.new("RGB", (8, 8), (s, 0, 0)) for s in (40, 80)}
    hook.after_dataset_saved("stage_two_validation_images", partitions, node=None)
    history = pd.DataFrame({"stage": ["stage_two"] * 2, "step": [40, 80], "eligible": [True] * 2,
                            "csim_dlib_heldout": [0.5, 0.4], "best_step": [40, 40],
                            "exported": [1, 0], "export_reason": ["export: best, why", None]})
    hook.after_dataset_saved("stage_two_validation_history", history, node=None)
    assert _steps(client, run_id, "stage_two_validation~grid") == ["40", "80"]
    metric = client.get_metric_history(run_id, "stage_two_validation/csim_dlib_heldout")
    assert [(m.step, m.value) for m in metric] == [(40, 0.5), (80, 0.4)]
    tags = client.get_run(run_id).data.tags
    assert tags["stage_two_validation.exported_step"] == "40"
    assert tags["stage_two_validation.export_reason"] == "export: best, why"


def test_a_step_image_waits_in_the_spool_through_an_outage(tmp_path, sqlite_store):
    from magicapture_pipeline.tracking.spool import SpoolingClient, deliver

    uri, client, run_id = _store(tmp_path, sqlite_store)

    class Down:
        def log_image(self, *args, **kwargs):
            raise ConnectionError("server down")

    spooling = SpoolingClient(Down(), run_id, tmp_path / "spool", uri)
    image = Image.new("RGB", (8, 8), (0, 9, 0))
    spooling.log_image(run_id, image, key="stage_one_validation/grid", step=30)
    assert spooling.pending and _steps(client, run_id, "grid") == []
    assert deliver(client, spooling.path) == 1
    assert _steps(client, run_id, "stage_one_validation~grid") == ["30"]


# MLflow 3.17.2's UI reads every file directly under a run's images/ as a log_image step file
# (<key>+step+<n>+timestamp+<ms>+<uuid>[+compressed].<ext>) and, at the first that is not, drops
# every image chart of the run (its step slider included); subfolders are skipped.
STEP_FILE = r"[^/+]+\+step\+\d+\+timestamp\+\d+\+[0-9a-f-]+(\+compressed)?\.(png|webp)"


def test_no_static_artifact_lands_directly_in_the_step_image_folder(tmp_path, sqlite_store):
    import re

    import pytest
    from pydantic import ValidationError

    from magicapture_pipeline.config.tracking import TrackingConfig
    from magicapture_pipeline.tracking.logged import log_saved

    folders = TrackingConfig().artifact_datasets
    assert all(folder.strip("/") != "images" for folder in folders.values()), folders
    with pytest.raises(ValidationError, match="artifact_datasets.concept_card: folder 'images'"):
        TrackingConfig(artifact_datasets={"concept_card": "images"})
    # the concept card and a step image through the real logging calls: the UI can parse images/
    _, client, run_id = _store(tmp_path, sqlite_store)
    card = tmp_path / "concept_card.png"
    Image.new("RGB", (8, 8)).save(card)
    log_saved(client, run_id, card, None, folders["concept_card"], "concept_card", 10)
    log_validation(
        client, run_id, "stage_two_validation", [], {40: {"grid": Image.new("RGB", (8, 8))}}
    )
    files = [f for f in client.list_artifacts(run_id, "images") if not f.is_dir]
    assert len(files) == 2, [f.path for f in files]  # the grid (.png) and its compressed .webp
    for f in files:
        assert re.fullmatch(STEP_FILE, f.path.removeprefix("images/")), f.path
    card_folder = folders["concept_card"]
    assert [f.path for f in client.list_artifacts(run_id, card_folder)] == [
        f"{card_folder}/concept_card.png"
    ]
