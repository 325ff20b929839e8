"""Small node helpers of the generate / evaluate pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from magicapture_pipeline.pipelines.generate.nodes import concept_dir
from magicapture_pipeline.pipelines.shared import base_model_path


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
