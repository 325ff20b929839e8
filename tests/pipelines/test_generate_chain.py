"""generate -> postprocess -> evaluate on a tiny concept, through the project's catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image
from skimage import data

from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.core.evaluation.metrics import AestheticMLP
from magicapture_pipeline.core.faces.regions import FaceRegions
from magicapture_pipeline.core.generation.postprocess import verify_provenance
from magicapture_pipeline.core.models.builders import build_tiny_sd
from magicapture_pipeline.pipelines import evaluate, generate, postprocess
from tiny_concept import tiny_clip_vision, write_test_concept

PROJECT = Path(__file__).resolve().parents[2]


CONCEPT = "test"  # the catalog's data/<layer>/<concept>/ paths (issue 11)


def _catalog_config() -> dict:
    text = (PROJECT / "conf/base/catalog_generate.yml").read_text()
    config = yaml.safe_load(text.replace("${_concept}", CONCEPT))
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _params(file: str, key: str) -> dict:
    return yaml.safe_load((PROJECT / f"conf/base/parameters_{file}.yml").read_text())[key]


def _save_tiny_clip(folder: Path) -> None:
    model, processor = tiny_clip_vision()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.mark.slow
def test_generate_postprocess_evaluate_chain(tmp_path, monkeypatch):
    base = build_tiny_sd(tmp_path / "sd", TinyModelConfig(sample_size=64))
    concept = write_test_concept(base, tmp_path / "concept")
    _save_tiny_clip(tmp_path / "clip")
    torch.save(AestheticMLP(16).state_dict(), tmp_path / "aesthetic.pth")
    monkeypatch.chdir(tmp_path)

    astronaut = Image.fromarray(data.astronaut()).crop((110, 10, 350, 250)).resize((128, 128))
    faces = FaceRegions()
    landmarks = faces.landmarks5(np.asarray(astronaut)).tolist()
    faces.close()
    reference = Image.fromarray(data.chelsea()).resize((128, 128))
    catalog = DataCatalog.from_config(_catalog_config())
    inputs = {
        "concept": str(concept),
        "base_model": {"path": str(base), "tiny": True},
        "face_crops": {"source/a": astronaut, "reference/r": reference},
        "face_masks": {"image/reference/r": Image.new("L", (128, 128), 0)},
        "training_set": {
            "items": [
                {"id": "a", "role": "source", "landmarks5": landmarks},
                {"id": "r", "role": "reference"},
            ]
        },
        "params:generation": {
            **_params("generate", "generation"),
            "resolution": 64,
            "seed": 0,
            "concept_name": "test",
            "images_per_prompt": 2,
            "num_inference_steps": 3,
        },
        "params:postprocess": _params("postprocess", "postprocess"),
        "params:stage_two": {},
        # training's validation outputs (issue 20), here with validation off: the card draws anyway
        "stage_two_validation_history": pd.DataFrame(columns=["step", "exported"]),
        "stage_two_validation_images": {},
        "params:evaluation": {
            **_params("evaluate", "evaluation"),
            "clip_model": str(tmp_path / "clip"),
            "aesthetic_model": str(tmp_path / "aesthetic.pth"),
        },
    }
    for name, value in inputs.items():
        catalog[name] = MemoryDataset(value)

    pipeline = (
        generate.create_pipeline() + postprocess.create_pipeline() + evaluate.create_pipeline()
    )
    SequentialRunner().run(pipeline, catalog)

    outputs = tmp_path / "data/07_model_output" / CONCEPT
    reports = tmp_path / "data/08_reporting" / CONCEPT
    generated = sorted((outputs / "generated").glob("*.png"))
    post = sorted((outputs / "postprocessed").glob("*.png"))
    assert [p.name for p in generated] == ["p00_s000.png", "p00_s001.png"]
    for path in generated:
        verdict = verify_provenance(path)
        assert verdict["ai_generated"] and verdict["chunk"]["concept"] == "test"
        assert "watermark_skipped" in verdict["chunk"]  # 64 px: below the watermark minimum
    for path in post:
        assert Image.open(path).size == (256, 256)  # Real-ESRGAN x4
        verdict = verify_provenance(path)
        assert verdict["watermark_ok"] is True, verdict
        assert verdict["chunk"]["postprocess_steps"] == ["super_resolution"]
    records = pd.read_csv(outputs / "generation_records.csv")
    assert list(records["seed"]) == [0, 1]
    assert set(records["scheduler"]) == {"euler_ancestral"}
    assert verify_provenance(reports / "generation_grid.png")["ai_generated"]

    report = json.loads((reports / "postprocess_report.json").read_text())
    assert "no checkpoint configured" in report["unavailable"]["face_restoration"]

    metrics = json.loads((reports / "metrics.json").read_text())
    card = Image.open(reports / "concept_card.png")
    assert card.width > 500 and card.height > 700
    for name in (
        "style_similarity",
        "aesthetic_score",
        "face_detected_rate",
        "postprocessed_style_similarity",
    ):
        assert isinstance(metrics[name], float), (name, metrics["unavailable"])
    assert -1.0 <= metrics["style_similarity"] <= 1.0
    # random tiny SD draws no faces: CSIM is unavailable with its reason, never a fake 0
    assert metrics["info"]["csim_source_faces"] == 1
    if "csim_dlib" not in metrics:
        assert "no face found in any generated image" in metrics["unavailable"]["csim_dlib"]
    per_image = pd.read_csv(reports / "per_image_metrics.csv")
    assert set(per_image["image_set"]) == {"generated", "postprocessed"}
    assert np.isfinite(per_image["aesthetic_score"]).all()
    assert (reports / "metrics_per_image.png").stat().st_size > 0
