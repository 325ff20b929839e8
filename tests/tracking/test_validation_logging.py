"""Validation images and metrics reach a real MLflow store with their steps (issue 20)."""

from __future__ import annotations

from PIL import Image

from magicapture_pipeline.tracking.validation import log_validation


def test_images_and_metrics_are_logged_with_their_step(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
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
