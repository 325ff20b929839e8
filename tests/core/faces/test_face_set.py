"""The preprocessed face set read from the catalog contract (training set, crops, masks)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from magicapture_pipeline.core.faces.face_set import (
    EvaluationInputs,
    Face,
    FaceSet,
    parse_landmarks5,
)


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
    out = EvaluationInputs.from_face_set(FaceSet.from_catalog(training_set, crops, masks))
    assert len(out.sources) == 1 and out.landmarks[0].shape == (5, 2)
    assert len(out.references) == 1 and out.masks[0].mode == "L"
    everything = EvaluationInputs.from_face_set(FaceSet.from_catalog(None, crops, masks))
    assert len(everything.sources) == 2


def test_unlisted_set_holds_every_crop_without_landmarks():
    crops = {"source/b": 1, "reference/r": 2, "source/a": 3, "loose": 4}
    face_set = FaceSet.from_catalog({"items": []}, crops, {})
    assert not face_set.listed
    assert [(f.role, f.id) for f in face_set.items] == [
        ("reference", "r"), ("source", "a"), ("source", "b"),
    ]
    assert all(f.landmarks5 is None for f in face_set.items)


def test_face_keys_default_to_the_contract_and_follow_the_item():
    face = Face.from_item({"id": 3, "role": "source"})
    assert (face.crop_key, face.mask_key, face.latent_mask_key) == (
        "source/3", "image/source/3", "latent/source/3",
    )
    moved = Face.from_item({"id": "x", "role": "reference", "crop": "c", "latent_mask": "l"})
    keys = (moved.crop_key, moved.mask_key, moved.latent_mask_key)
    assert keys == ("c", "image/reference/x", "l")


def test_held_out_faces_are_sources_and_never_items():
    training_set = {
        "resolution": 64,
        "items": [{"id": "s0", "role": "source"}],
        "held_out": [{"id": "s1", "role": "source"}, {"id": "s2"}],
    }
    face_set = FaceSet.from_catalog(training_set, {}, {})
    assert face_set.resolution == 64
    assert [f.id for f in face_set.items] == ["s0"]
    assert [(f.role, f.crop_key) for f in face_set.held_out] == [
        ("source", "source/s1"), ("source", "source/s2"),
    ]


@pytest.mark.parametrize("empty", [None, "", "  ", float("nan")])
def test_landmarks_absent(empty):
    assert parse_landmarks5(empty) is None


def test_landmarks_from_json_text_and_lists():
    points = [[float(i), float(i + 1)] for i in range(5)]
    from_text = parse_landmarks5(str(points))
    assert from_text.dtype == np.float32 and from_text.shape == (5, 2)
    np.testing.assert_array_equal(from_text, parse_landmarks5(points))


def test_latent_mask_falls_back_to_the_image_mask_downsampled():
    face_set = FaceSet.from_catalog(
        {"items": [{"id": "a", "role": "source"}]},
        {"source/a": Image.new("RGB", (64, 64))},
        {"image/source/a": Image.new("L", (64, 64), 255)},
    )
    (face,) = face_set.items
    assert face_set.latent_mask(face).size == (8, 8)
    assert FaceSet.from_catalog({"items": [{"id": "a", "role": "source"}]}, {}, {}).latent_mask(
        face
    ) is None
