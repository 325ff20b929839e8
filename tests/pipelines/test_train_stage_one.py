"""The ``train_stage_one`` pipeline: base model preparation and the embedding-only stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import CSVDataset
from kedro_datasets.pillow import ImageDataset
from PIL import Image

from magicapture_pipeline.core.faces.analysis import analyze_reference, analyze_source
from magicapture_pipeline.core.faces.detection import FaceAnalyzer
from magicapture_pipeline.core.faces.sample_data import build_sample_set
from magicapture_pipeline.core.models.loading import is_local_model
from magicapture_pipeline.datasets.tensors import SafetensorsDataset
from magicapture_pipeline.pipelines.train_stage_one import create_pipeline
from magicapture_pipeline.pipelines.train_stage_one.nodes import prepare_base_model

RES = 64
ACCEPTED = {"resolution": RES, "items": []}  # prepare_base_model only waits for it


def demo_inputs(resolution: int = RES, count: int = 3) -> dict:
    """training_set, face_crops and face_masks of the demo photos, in the catalog contract."""
    crops, masks, items = {}, {}, []
    with FaceAnalyzer() as analyzer:
        for role, analyze in (("source", analyze_source), ("reference", analyze_reference)):
            for sample in build_sample_set(role, count):
                result = analyze(sample.pixels, analyzer, resolution)
                ident = sample.file_name.rsplit(".", 1)[0]
                crops[f"{role}/{ident}"] = Image.fromarray(result.crop)
                masks[f"image/{role}/{ident}"] = Image.fromarray(result.mask, mode="L")
                masks[f"latent/{role}/{ident}"] = Image.fromarray(result.latent_mask, mode="L")
                items.append(
                    {
                        "id": ident,
                        "role": role,
                        "crop": f"{role}/{ident}",
                        "mask": f"image/{role}/{ident}",
                        "landmarks5": result.landmarks5,
                    }
                )
    return {
        "training_set": {"resolution": resolution, "items": items},
        "face_crops": crops,
        "face_masks": masks,
    }


@pytest.mark.parametrize("runs", [1, 2])
def test_prepare_base_model_builds_the_tiny_model_once(tmp_path, runs):
    params = {"pretrained": str(tmp_path / "tiny_sd"), "tiny": {"sample_size": RES}}
    records = [prepare_base_model(params, ACCEPTED) for _ in range(runs)]
    assert is_local_model(tmp_path / "tiny_sd")
    assert [r["built"] for r in records] == [True, False][:runs]
    assert records[-1] == {**records[-1], "path": str(tmp_path / "tiny_sd"), "tiny": True}
    json.dumps(records[-1])  # the catalog stores it as JSON


def test_prepare_base_model_refuses_an_unloadable_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="neither a local diffusers folder"):
        prepare_base_model({"pretrained": "nobody/no-such-model-magicapture"}, ACCEPTED)


def test_prepare_base_model_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown_key"):
        prepare_base_model({"pretrained": "x", "unknown_key": 1}, ACCEPTED)


def test_the_base_model_is_prepared_only_after_the_photos_are_accepted():
    """In the main job, the (at real size, several GB) model load comes after validation: a
    rejected photo fails the run before it. Kedro runs nodes in an order their data allows,
    breaking ties by name, which put ``prepare_base_model`` first."""
    from magicapture_pipeline.pipeline_registry import ProjectPipelines

    order = [node.name for node in ProjectPipelines()["customize"].nodes]
    validation = ("preprocess_faces", "validate_face_set", "accept_training_set")
    assert max(order.index(name) for name in validation) < order.index("prepare_base_model")


def test_stage_one_pipeline_on_the_demo_photos(tmp_path):
    inputs = demo_inputs()
    catalog = DataCatalog(
        {
            **{name: MemoryDataset(value) for name, value in inputs.items()},
            "params:model": MemoryDataset(
                {"pretrained": str(tmp_path / "tiny_sd"), "tiny": {"sample_size": RES}}
            ),
            "params:stage_one": MemoryDataset(
                {"max_steps": 4, "gradient_accumulation_steps": 1, "mixed_precision": "no"}
            ),
            "params:generation": MemoryDataset({}),
            "params:evaluation": MemoryDataset({}),
            "stage_one_embeddings": SafetensorsDataset(filepath=str(tmp_path / "emb.safetensors")),
            # a file, not a MemoryDataset: Kedro releases that once the plot node has read it
            "stage_one_history": CSVDataset(filepath=str(tmp_path / "history.csv")),
            "stage_one_loss_curves": ImageDataset(filepath=str(tmp_path / "curves.png")),
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)
    embeddings = catalog["stage_one_embeddings"].load()
    assert sorted(embeddings) == ["<v1>", "<v2>"] and embeddings["<v1>"].shape == (32,)
    history = catalog["stage_one_history"].load()
    assert list(history["step"]) == [1, 2, 3, 4]
    assert np.isfinite(history["loss"]).all() and set(history["task"]) <= {"source", "reference"}
    assert catalog["stage_one_loss_curves"].load().width > 300
    # validation is off unless the env turns it on: an empty table with its columns, no images
    validation = catalog["stage_one_validation_history"].load()
    assert validation.empty and "exported" in validation.columns
    assert catalog["stage_one_validation_images"].load() == {}
