"""Raw photo folders: undecoded bytes, read-only, clear errors; the demo folder fills itself."""

from __future__ import annotations

import pytest
from kedro.io import DatasetError

from magicapture_pipeline.core.images import RawImage
from magicapture_pipeline.core.sample_data import MANIFEST_NAME
from magicapture_pipeline.datasets.raw_images import RawImageFolderDataset, SampleImageFolderDataset


def test_load_returns_undecoded_bytes_and_skips_non_images(tmp_path):
    (tmp_path / "a.JPG").write_bytes(b"not decoded here")
    (tmp_path / "b.png").write_bytes(b"\x89PNG...")
    (tmp_path / "README.txt").write_text("notes")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    loaded = RawImageFolderDataset(path=str(tmp_path)).load()
    assert sorted(loaded) == ["a", "b"]
    assert loaded["a"] == RawImage("a", str(tmp_path / "a.JPG"), b"not decoded here")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p.mkdir(), "empty_folder"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "empty_folder"),
        (lambda p: None, "does not exist"),
        (lambda p: (p.mkdir(), (p / "x.jpg").write_bytes(b"1"), (p / "x.png").write_bytes(b"2")),
         "duplicate_id"),
    ],
    ids=["empty", "no_images", "missing", "same_stem"],
)
def test_folder_errors_name_the_folder(tmp_path, setup, message):
    folder = tmp_path / "photos"
    setup(folder)
    with pytest.raises(DatasetError, match=message) as caught:
        RawImageFolderDataset(path=str(folder)).load()
    assert str(folder) in str(caught.value)


def test_save_refuses_and_leaves_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"original")
    dataset = RawImageFolderDataset(path=str(tmp_path))
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save({"a": b"changed"})
    assert (tmp_path / "a.jpg").read_bytes() == b"original"


def test_sample_folder_materialises_once(tmp_path):
    folder = tmp_path / "demo" / "source"
    dataset = SampleImageFolderDataset(path=str(folder), role="source", count=4)
    loaded = dataset.load()
    assert len(loaded) == 4 and (folder / MANIFEST_NAME).is_file()
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert dataset.load().keys() == loaded.keys()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp  # not rewritten


def test_sample_folder_keeps_user_photos(tmp_path):
    (tmp_path / "mine.jpg").write_bytes(b"user photo")
    loaded = SampleImageFolderDataset(path=str(tmp_path), role="reference").load()
    assert list(loaded) == ["mine"]


def test_sample_folder_role_checked(tmp_path):
    with pytest.raises(DatasetError, match="role"):
        SampleImageFolderDataset(path=str(tmp_path), role="style")
