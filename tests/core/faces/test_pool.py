"""Issue 19 §5: the face stage in a process pool gives the serial path's output byte for byte."""

from __future__ import annotations

import pytest

from magicapture_pipeline.config.preprocess import PreprocessConfig
from magicapture_pipeline.core.faces.image_set import analyze_image_set
from magicapture_pipeline.core.faces.images import RawImage, encode_png
from magicapture_pipeline.core.faces.pool import FacePool
from magicapture_pipeline.core.faces.sample_data import build_sample_set


def _demo_raw_sets() -> dict[str, dict[str, RawImage]]:
    """The shipped demo photos (6 sources, 6 references) as undecoded PNG files, plus one file
    that does not decode (its row must come back in its place too)."""
    sets: dict[str, dict[str, RawImage]] = {}
    for role in ("source", "reference"):
        images = build_sample_set(role, 6)
        sets[role] = {
            image.file_name.rsplit(".", 1)[0]: RawImage(
                image.file_name.rsplit(".", 1)[0], f"{role}/{image.file_name}",
                encode_png(image.pixels),
            )
            for image in images
        }  # fmt: skip
    sets["source"]["broken"] = RawImage("broken", "source/broken.png", b"not a png")
    return sets


def test_pool_output_equals_serial_output_byte_for_byte():
    raw = _demo_raw_sets()
    serial = analyze_image_set(raw, PreprocessConfig(resolution=256))
    parallel = analyze_image_set(raw, PreprocessConfig(resolution=256, workers=2))
    assert [row["id"] for row in parallel.rows] == [row["id"] for row in serial.rows]
    assert parallel.rows == serial.rows  # every field, identity distances included
    assert sum(row["status"] == "decode_error" for row in serial.rows) == 1
    assert sum(row["n_faces"] or 0 for row in serial.rows) >= 6  # faces were really found
    for name in ("crops", "masks", "overlays"):
        ours, theirs = getattr(parallel, name), getattr(serial, name)
        assert list(ours) == list(theirs), name
        for key, array in theirs.items():
            assert ours[key].dtype == array.dtype and ours[key].shape == array.shape, key
            assert ours[key].tobytes() == array.tobytes(), key


def test_pool_refuses_one_worker_and_the_config_refuses_zero():
    with pytest.raises(ValueError, match="workers >= 2"):
        FacePool(1)
    with pytest.raises(ValueError, match="workers"):
        PreprocessConfig(workers=0)
