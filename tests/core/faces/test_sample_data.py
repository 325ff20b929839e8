"""Demo photos: deterministic, distinct, with provenance and licence for every file."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from magicapture_pipeline.core.faces.quality import hamming, phash
from magicapture_pipeline.core.faces.sample_data import (
    MANIFEST_NAME,
    build_sample_set,
    manifest,
    write_sample_set,
)


@pytest.fixture(scope="module")
def sets():
    return {role: build_sample_set(role, 6) for role in ("source", "reference")}


@pytest.mark.parametrize("role", ["source", "reference"])
def test_set_is_deterministic_and_rgb(sets, role):
    again = build_sample_set(role, 6)
    for first, second in zip(sets[role], again, strict=True):
        assert first.file_name == second.file_name
        assert np.array_equal(first.pixels, second.pixels)
        assert first.pixels.dtype == np.uint8 and first.pixels.shape[2] == 3
        assert min(first.pixels.shape[:2]) >= 256


def test_no_two_demo_images_are_near_duplicates(sets):
    everything = sets["source"] + sets["reference"]
    hashes = {image.file_name: phash(image.pixels) for image in everything}
    closest = min(hamming(a, b) for a, b in itertools.combinations(hashes.values(), 2))
    assert closest >= 8  # the validation default: the demo set must pass it


def test_manifest_records_origin_licence_transform(sets):
    record = manifest(sets["source"] + sets["reference"])
    assert len(record["files"]) == 12
    for entry in record["files"]:
        assert entry["origin"] and entry["licence"] and entry["transform"]
        assert entry["file"].startswith(entry["role"] + "/")
    assert any("grace_hopper" in e["origin"] for e in record["files"])
    assert all("public domain" in e["licence"] for e in record["files"] if e["role"] == "source")


def test_write_sample_set(tmp_path):
    record = write_sample_set(tmp_path / "ref", "reference", 4)
    written = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert len(written) == 5 and MANIFEST_NAME in written
    assert json.loads((tmp_path / "ref" / MANIFEST_NAME).read_text()) == record


@pytest.mark.parametrize(("role", "count"), [("source", 0), ("source", 7), ("style", 3)])
def test_bad_requests_rejected(role, count):
    with pytest.raises(ValueError, match=role if role == "style" else "count"):
        build_sample_set(role, count)
