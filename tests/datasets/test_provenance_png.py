"""The PNG dataset writes and reads each image's own provenance chunk."""

from __future__ import annotations

import pytest
from kedro.io import DatasetError
from PIL import Image

from magicapture_pipeline.core.generation.postprocess import PROVENANCE_KEY, mark, read_provenance
from magicapture_pipeline.datasets.provenance_png import ProvenancePNGDataset


def test_save_load_keeps_per_image_chunk(tmp_path):
    image = mark(Image.new("RGB", (32, 32), "red"), {"ai_generated": True, "seed": 3}, None)
    dataset = ProvenancePNGDataset(filepath=str(tmp_path / "sub" / "a.png"))
    dataset.save(image)
    assert dataset.exists()
    loaded = dataset.load()
    assert loaded.size == (32, 32)
    assert read_provenance(loaded) == {"ai_generated": True, "seed": 3}
    assert read_provenance(tmp_path / "sub" / "a.png")["seed"] == 3


def test_refuses_image_without_provenance(tmp_path):
    dataset = ProvenancePNGDataset(filepath=str(tmp_path / "b.png"))
    with pytest.raises(DatasetError, match=PROVENANCE_KEY):
        dataset.save(Image.new("RGB", (8, 8)))
