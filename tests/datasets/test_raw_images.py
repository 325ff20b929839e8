"""Raw photo folders: undecoded bytes, read-only, clear errors; the demo folder fills itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.io import DatasetError

from magicapture_pipeline.core.faces.images import RawImage
from magicapture_pipeline.core.faces.sample_data import MANIFEST_NAME
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
    dataset = SampleImageFolderDataset(
        path=str(folder), role="source", count=4, sample_root=str(tmp_path / "demo")
    )
    loaded = dataset.load()
    assert len(loaded) == 4 and (folder / MANIFEST_NAME).is_file()
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert dataset.load().keys() == loaded.keys()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp  # not rewritten


def test_a_load_while_another_writes_the_demo_set_waits_for_the_whole_set(tmp_path, monkeypatch):
    """Two concepts of a batch start at once on the same demo folder: the one that finds some
    images already there (the other is still writing) must wait for the writer and read all of
    them, not the part written so far (a Ray batch's concept once trained on a partial set)."""
    import threading

    from magicapture_pipeline.core.faces import sample_data

    first_written, release = threading.Event(), threading.Event()

    def slow_writer(folder, role, count):  # the real writer's files, one at a time
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (folder / f"{role}_{index}.png").write_bytes(b"png")
            first_written.set()
            release.wait(5)

    monkeypatch.setattr(sample_data, "write_sample_set", slow_writer)
    folder, root = tmp_path / "demo" / "reference", tmp_path / "demo"

    def dataset():
        return SampleImageFolderDataset(path=str(folder), role="reference", count=3,
                                        sample_root=str(root))  # fmt: skip

    writer = threading.Thread(target=dataset().load)
    writer.start()
    assert first_written.wait(5)
    found = {}
    reader = threading.Thread(target=lambda: found.update(dataset().load()))
    reader.start()
    reader.join(0.5)  # the reader must still be waiting for the writer here
    release.set()
    writer.join(5)
    reader.join(5)
    assert sorted(found) == ["reference_0", "reference_1", "reference_2"]


def test_sample_folder_keeps_user_photos(tmp_path):
    (tmp_path / "mine.jpg").write_bytes(b"user photo")
    loaded = SampleImageFolderDataset(path=str(tmp_path), role="reference").load()
    assert list(loaded) == ["mine"]


def test_sample_folder_role_checked(tmp_path):
    with pytest.raises(DatasetError, match="role"):
        SampleImageFolderDataset(path=str(tmp_path), role="style")


def _names(loaded):
    return {key: (raw.refused or "read").split(":")[0] for key, raw in loaded.items()}


def test_links_inside_are_read_links_outside_refused_unless_allowed(tmp_path):
    folder, outside = tmp_path / "photos", tmp_path / "private.jpg"
    folder.mkdir()
    outside.write_bytes(b"secret bytes")
    (folder / "a.jpg").write_bytes(b"inside")
    (folder / "same.jpg").symlink_to(folder / "a.jpg")
    (folder / "out.jpg").symlink_to(outside)
    (folder / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (folder / "x.jpg").symlink_to(folder / "y.jpg")
    (folder / "y.jpg").symlink_to(folder / "x.jpg")
    loaded = RawImageFolderDataset(path=str(folder)).load()
    assert _names(loaded) == {
        "a": "read", "same": "read", "out": "symlink_outside_folder",
        "gone": "broken_symlink", "x": "symlink_loop", "y": "symlink_loop",
    }  # fmt: skip
    assert loaded["same"].data == b"inside"
    assert loaded["out"].data == b"" and str(outside) in loaded["out"].refused
    allowed = RawImageFolderDataset(path=str(folder), allow_outside_symlinks=True).load()
    assert allowed["out"].data == b"secret bytes" and allowed["out"].refused is None


def test_non_utf8_and_very_long_names_get_safe_unique_ids(tmp_path):
    import json
    import os

    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg"), "wb") as handle:
        handle.write(b"1")
    long_a, long_b = "n" * 240 + "a", "n" * 240 + "b"
    (tmp_path / f"{long_a}.jpg").write_bytes(b"2")
    (tmp_path / f"{long_b}.jpg").write_bytes(b"3")
    loaded = RawImageFolderDataset(path=str(tmp_path)).load()
    assert "caf\\xe9" in loaded and loaded["caf\\xe9"].data == b"1"
    json.dumps(list(loaded)).encode("utf-8")  # ids and paths are valid text
    json.dumps([raw.path for raw in loaded.values()]).encode("utf-8")
    long_ids = [key for key in loaded if key.startswith("n")]
    assert len(long_ids) == 2 and all(len(key) <= 80 for key in long_ids)
    assert {loaded[key].data for key in long_ids} == {b"2", b"3"}


def test_hundreds_of_files_load_or_are_refused_by_count(tmp_path):
    for index in range(250):
        (tmp_path / f"photo_{index:03d}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not counted")
    assert len(RawImageFolderDataset(path=str(tmp_path), max_files=300).load()) == 250
    with pytest.raises(DatasetError, match="too_many_files: 250 photos, more than max_files"):
        RawImageFolderDataset(path=str(tmp_path)).load()


def test_image_like_files_are_named_not_dropped_and_subfolders_logged(tmp_path, caplog):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.HEIC").write_bytes(b"heic bytes")
    (tmp_path / "c.CR2").write_bytes(b"raw")
    (tmp_path / "d.jxl").write_bytes(b"jxl")
    (tmp_path / "trip").mkdir()
    (tmp_path / "trip" / "e.jpg").write_bytes(b"y")
    with caplog.at_level("WARNING"):
        loaded = RawImageFolderDataset(path=str(tmp_path)).load()
    assert _names(loaded) == {
        "a": "read", "b": "read", "c": "unsupported_format", "d": "unsupported_format"
    }
    assert "sub-folders are not read" in caplog.text and "trip" in caplog.text
