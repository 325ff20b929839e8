"""The overlay blends only the rows its mask touches (issue 19 §5); the picture must stay the
whole-image blend's byte for byte, on every demo photo, at resolutions whose rows are and are
not a multiple of OpenCV's vector width, with hard and feathered masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from magicapture_pipeline.core.faces.analysis import analyze_reference, analyze_source
from magicapture_pipeline.core.faces.detection import FaceAnalyzer
from magicapture_pipeline.core.faces.overlays import overlay
from magicapture_pipeline.core.faces.sample_data import build_sample_set


def _whole_image_overlay(crop, mask, alpha=0.45, colour=(0, 200, 80)):
    """The overlay as it was before the band (without box and landmarks, drawn alike by
    both): the blend and the contours over the whole crop."""
    weight = mask.astype(np.float32) * (alpha / 255.0)
    tint = np.empty_like(crop)
    tint[:] = colour
    out = cv2.blendLinear(crop, tint, 1.0 - weight, weight)
    thickness = max(1, crop.shape[0] // 256)
    contours, _ = cv2.findContours(
        (mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(out, contours, -1, colour, thickness, cv2.LINE_AA)
    return out


@pytest.mark.parametrize("resolution", [128, 200, 512])
def test_band_overlay_equals_the_whole_image_blend_byte_for_byte(resolution):
    photos = [(s.pixels, "source") for s in build_sample_set("source", 6)]
    photos += [(s.pixels, "reference") for s in build_sample_set("reference", 6)]
    tinted = 0
    with FaceAnalyzer() as analyzer:
        for feather in (0.0, 0.05):
            for rgb, role in photos:
                analyze = analyze_source if role == "source" else analyze_reference
                found = analyze(rgb, analyzer, resolution, mask_feather=feather)
                ours = overlay(found.crop, found.mask)  # no box or points: blend + contours
                theirs = _whole_image_overlay(found.crop, found.mask)
                assert ours.tobytes() == theirs.tobytes(), (role, resolution, feather)
                tinted += bool(found.mask.any())
                full = found.overlay  # with the box and landmarks as preprocessing draws them
                assert full.shape == found.crop.shape and full.dtype == np.uint8
    assert tinted >= 12  # faces were found: the band was really used


def test_band_overlay_on_an_empty_and_a_full_mask():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    empty = np.zeros((96, 96), np.uint8)
    assert overlay(crop, empty).tobytes() == crop.tobytes()  # nothing tinted, nothing drawn
    for mask in (np.full((96, 96), 255, np.uint8), rng.integers(0, 256, (96, 96), np.uint8)):
        assert overlay(crop, mask).tobytes() == _whole_image_overlay(crop, mask).tobytes()
