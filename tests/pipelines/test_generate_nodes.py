"""Small node helpers of the generate / evaluate pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from magicapture_pipeline.pipelines.generate.nodes import concept_dir
from magicapture_pipeline.pipelines.shared import base_model_path, inputs_from_preprocess


@pytest.mark.parametrize(
    ("loaded", "expected"),
    [
        ("data/06_models/concept", Path("data/06_models/concept")),
        (Path("/x/concept"), Path("/x/concept")),
        ({"path": "/x/c", "tokens": []}, Path("/x/c")),
    ],
)
def test_concept_dir(loaded, expected):
    assert concept_dir(loaded) == expected


def test_concept_dir_rejects_unknown():
    with pytest.raises(TypeError):
        concept_dir({"tokens": []})


@pytest.mark.parametrize(
    ("loaded", "expected"),
    [
        (
            {"path": "runwayml/stable-diffusion-v1-5", "tiny": False},
            "runwayml/stable-diffusion-v1-5",
        ),
        ("data/06_models/tiny_sd", "data/06_models/tiny_sd"),
    ],
)
def test_base_model_path(loaded, expected):
    assert base_model_path(loaded) == expected


def test_inputs_follow_training_set_and_lazy_partitions():
    crop = Image.new("RGB", (16, 16))
    crops = {"source/a": lambda: crop, "source/rejected": crop, "reference/r": crop}
    masks = {"image/reference/r": lambda: Image.new("L", (16, 16))}
    training_set = {
        "items": [
            {"id": "a", "role": "source", "landmarks5": [[1, 2]] * 5},
            {"id": "r", "role": "reference"},
        ]
    }
    out = inputs_from_preprocess(crops, masks, training_set)
    assert len(out["sources"]) == 1 and out["landmarks"][0].shape == (5, 2)
    assert len(out["references"]) == 1 and out["masks"][0].mode == "L"
    everything = inputs_from_preprocess(crops, masks, None)
    assert len(everything["sources"]) == 2
