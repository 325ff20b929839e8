"""Faces in generated images: detection, mask and landmarks on a real photo (mediapipe)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from magicapture_pipeline.core.faces.regions import FaceRegions


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def test_face_regions_on_real_photo(astronaut):
    faces = FaceRegions()
    try:
        assert faces.detected(astronaut)
        assert not faces.detected(Image.new("RGB", (256, 256), "gray"))
        mask = np.asarray(faces.mask(astronaut))
        assert mask.shape == (512, 512) and 0.02 < (mask > 127).mean() < 0.5
        assert faces.landmarks5(np.asarray(astronaut)).shape == (5, 2)
    finally:
        faces.close()
