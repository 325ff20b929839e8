"""Validation during training through Kedro (issue 20): the demo, tiny and few steps, with
validation on. The histories' steps, the images and metrics in MLflow with their steps, the
exported step recorded in concept.json and the run, and the exported weights equal to the
checkpoint of the chosen step (both stages)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_kedro_here

# face_detected_rate is computed on any image (tiny random models draw no faces: 0.0 at every
# validation, and a tie keeps the earlier step), so "best" is a step before the last one; the
# held-out identity objective would be "not computed" and fall back to the last step.
OBJECTIVE = "face_detected_rate"
PARAMS = ",".join([
    "stage_one.max_steps=4", "stage_one.validation.every_n_steps=2",
    f"stage_one.validation.objective={OBJECTIVE}",
    "stage_two.max_steps=4", "stage_two.validation.every_n_steps=2", "stage_two.heatmap_every=4",
    f"stage_two.validation.objective={OBJECTIVE}",
    "generation.num_inference_steps=2",
])  # fmt: skip
PIPELINES = "--pipelines=preprocess,train_stage_one,train_stage_two"


def _digests(tensors) -> list[str]:
    return sorted(
        hashlib.sha256(t.float().contiguous().view(-1).numpy().tobytes()).hexdigest()
        for t in tensors
    )


@pytest.mark.integration
@pytest.mark.slow
def test_demo_trains_with_validation_and_exports_the_chosen_step(project_copy, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MAGICAPTURE_MLFLOW", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Kedro's command line in this process (``run_kedro_here``): what the run writes is under
    # test; the demo chain of ``demo_run`` is the real ``kedro`` process of these stages
    done = run_kedro_here(project_copy, "run", PIPELINES, "--env=demo", f"--params={PARAMS}")
    assert done.returncode == 0, done.stderr[-4000:]
    reports = project_copy / "data/08_reporting/demo"
    models = project_copy / "data/06_models/demo"
    client = MlflowClient(tracking_uri=f"sqlite:///{project_copy / 'mlflow.db'}")
    (run,) = client.search_runs(client.get_experiment_by_name("magicapture-demo").experiment_id)
    concept = models / "concept"
    info = json.loads((concept / "concept.json").read_text())

    import pandas as pd

    for stage in ("stage_one", "stage_two"):
        history = pd.read_csv(reports / f"{stage}_validation_history.csv")
        assert list(history["step"]) == [2, 4], stage
        assert history[OBJECTIVE].notna().all() and history["eligible"].all()
        chosen = int(history["best_step"].iloc[-1])
        assert list(history.loc[history["exported"] == 1, "step"]) == [chosen]
        prefix = f"{stage}_validation"
        metric = client.get_metric_history(run.info.run_id, f"{prefix}/{OBJECTIVE}")
        assert [m.step for m in metric] == [2, 4]
        assert [m.value for m in metric] == list(history[OBJECTIVE])
        assert run.data.tags[f"{prefix}.exported_step"] == str(chosen)
        assert run.data.tags[f"{prefix}.export_reason"].startswith("export: best")
        listed = client.list_artifacts(run.info.run_id, "images")
        images = [f.path for f in listed]
        # MLflow's UI drops every image chart of a run with any other file directly in images/
        loose = [f.path for f in listed if not f.is_dir and "+step+" not in f.path]
        assert not loose, loose
        grids = sorted(p for p in images if f"{prefix}~grid" in p and p.endswith(".png"))
        assert [p.split("+step+")[1].split("+")[0] for p in grids] == ["2", "4"], images
        assert sorted((reports / prefix).rglob("*.png"))  # the catalog's partitions too

        checkpoint = models / f"checkpoints/{stage}/checkpoint-{chosen}/trainable.safetensors"
        saved = load_file(checkpoint)
        if stage == "stage_one":
            exported = load_file(models / "stage_one/embeddings.safetensors")
            rows = torch.stack([exported["<v1>"], exported["<v2>"]])
        else:
            assert info["exported_step"] == chosen
            assert info["export_reason"] == run.data.tags[f"{prefix}.export_reason"]
            rows = torch.stack([
                next(iter(load_file(concept / t["file"]).values())).reshape(-1)
                for t in info["tokens"]
            ])  # fmt: skip
            lora = load_file(concept / "pytorch_lora_weights.safetensors")
            unet = [v for k, v in saved.items() if k.startswith("unet.")]
            assert lora and _digests(lora.values()) == _digests(unet)  # alpha = rank: no fold
        assert torch.equal(rows, saved["placeholder_rows"]), stage
        last = load_file(checkpoint.parent.parent / "checkpoint-4" / "trainable.safetensors")
        if chosen != 4:  # the weights moved after the chosen step: the export is not the last
            assert not torch.equal(rows, last["placeholder_rows"]), stage
