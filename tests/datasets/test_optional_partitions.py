"""Validation images may be none (validation off): the dataset loads {} instead of failing, so
the concept card draws without them (issue 20; a demo run with validation off failed on it)."""

from __future__ import annotations

from PIL import Image

from magicapture_pipeline.datasets.optional_partitions import OptionalPartitionedDataset


def _dataset(path) -> OptionalPartitionedDataset:
    return OptionalPartitionedDataset(path=str(path), dataset={"type": "pillow.ImageDataset"},
                                      filename_suffix=".png", overwrite=True)  # fmt: skip


def test_empty_and_missing_folders_load_as_no_partitions(tmp_path):
    assert _dataset(tmp_path / "never_written").load() == {}
    dataset = _dataset(tmp_path / "images")
    dataset.save({"step_000002/grid": Image.new("RGB", (4, 4), (9, 0, 0))})
    loaded = dataset.load()
    assert list(loaded) == ["step_000002/grid"]
    assert loaded["step_000002/grid"]().getpixel((0, 0)) == (9, 0, 0)
    dataset.save({})  # a later run without validation: the old images are gone, nothing fails
    assert dataset.load() == {}
