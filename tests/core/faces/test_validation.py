"""Every validation rule, table-driven: the failing file, rule, value and range are named."""

from __future__ import annotations

import pandas as pd
import pytest

from magicapture_pipeline.config.preprocess import ValidationConfig
from magicapture_pipeline.core.faces.validation import (
    ValidationFailed,
    raise_if_failed,
    rules_from_config,
    validate_face_metadata,
)

# Well-separated 64-bit hashes (pairwise Hamming distance >= 16).
HASHES = ["0000000000000000", "ffff000000000000", "0000ffff00000000", "00000000ffff0000",
          "000000000000ffff", "ffffffff00000000"]


def _row(file_id: str, role: str, index: int, **changes) -> dict:
    row = {
        "id": file_id, "role": role, "path": f"/photos/{role}/{file_id}.jpg",
        "width": 512, "height": 640, "n_faces": 1 if role == "source" else 0,
        "face_score": 0.93 if role == "source" else 0.0, "bbox": "[1, 2, 3, 4]",
        "face_area_fraction": 0.08 if role == "source" else 0.0,
        "mask_coverage": 0.15 if role == "source" else 0.0, "sharpness": 300.0,
        "phash": HASHES[index], "status": "ok", "reason": "",
        "identity_distance": 0.1 if role == "source" else None,
    }
    row.update(changes)
    return row


def _table(**changes_by_id) -> pd.DataFrame:
    specs = [("s1", "source"), ("s2", "source"), ("s3", "source"), ("r1", "reference"),
             ("r2", "reference")]
    return pd.DataFrame([
        _row(file_id, role, i, **changes_by_id.get(file_id, {}))
        for i, (file_id, role) in enumerate(specs)
    ])


CONFIG = ValidationConfig()

# (case, changes per id, expected failing (file, rule) pairs)
CASES = [
    ("two_faces", {"s2": {"n_faces": 2, "status": "multiple_faces"}},
     {("s2.jpg", "exactly_one_face")}),
    ("no_face", {"s1": {"n_faces": 0, "face_score": 0.0, "status": "no_face",
                        "face_area_fraction": 0.0, "mask_coverage": 0.0}},
     {("s1.jpg", "exactly_one_face"), ("s1.jpg", "face_score"),
      ("s1.jpg", "face_area_fraction"), ("s1.jpg", "mask_coverage")}),
    ("weak_face", {"s3": {"face_score": 0.55}}, {("s3.jpg", "face_score")}),
    ("face_too_small", {"s1": {"face_area_fraction": 0.002}}, {("s1.jpg", "face_area_fraction")}),
    ("face_too_big", {"s1": {"face_area_fraction": 0.95}}, {("s1.jpg", "face_area_fraction")}),
    ("low_resolution_source", {"s2": {"width": 200}}, {("s2.jpg", "image_side")}),
    ("low_resolution_reference", {"r2": {"height": 100}}, {("r2.jpg", "image_side")}),
    ("mask_too_small", {"s1": {"mask_coverage": 0.01}}, {("s1.jpg", "mask_coverage")}),
    ("mask_too_big", {"s3": {"mask_coverage": 0.8}}, {("s3.jpg", "mask_coverage")}),
    ("duplicate_pair", {"s3": {"phash": HASHES[0][:-1] + "3"}},
     {("s1.jpg", "no_near_duplicates"), ("s3.jpg", "no_near_duplicates")}),
    ("source_equals_reference", {"r1": {"phash": HASHES[1]}},
     {("s2.jpg", "no_near_duplicates"), ("r1.jpg", "no_near_duplicates")}),
    ("other_person", {"s2": {"identity_distance": 0.7}}, {("s2.jpg", "same_person")}),
    ("undecodable", {"r2": {"status": "decode_error", "reason": "truncated: incomplete",
                            "width": None, "height": None, "phash": None}},
     {("r2.jpg", "image_decodes")}),
]


def test_clean_set_passes():
    report = validate_face_metadata(_table(), CONFIG)
    assert report["success"] and not report["failures"]
    assert {r["rule"] for r in report["rules"]} == {r.name for r in rules_from_config(CONFIG)}
    assert (report["n_source"], report["n_reference"]) == (3, 2)
    raise_if_failed(report)  # no exception


@pytest.mark.parametrize(("case", "changes", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_names_the_offending_file(case, changes, expected):
    report = validate_face_metadata(_table(**changes), CONFIG)
    assert not report["success"]
    assert {(f["file"], f["rule"]) for f in report["failures"]} == expected
    with pytest.raises(ValidationFailed) as caught:
        raise_if_failed(report)
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == len(expected)
    for file_name, rule in expected:
        assert any(file_name in line and f": {rule}:" in line and "allowed" in line
                   for line in lines)


@pytest.mark.parametrize(
    ("keep", "rule", "observed"),
    [
        (["r1", "r2"], "source_count", 0),
        (["s1", "s2", "s3"], "reference_count", 0),
    ],
)
def test_set_sizes(keep, rule, observed):
    table = _table()
    report = validate_face_metadata(table[table["id"].isin(keep)], CONFIG)
    failures = [f for f in report["failures"] if f["rule"] == rule]
    assert failures and failures[0]["value"] == observed and "[1, 20]" in failures[0]["allowed"]


def test_too_many_sources():
    config = ValidationConfig(max_source_images=2)
    report = validate_face_metadata(_table(), config)
    assert [(f["rule"], f["value"]) for f in report["failures"]] == [("source_count", 3)]


def test_failure_line_has_value_and_range():
    report = validate_face_metadata(_table(s3={"face_score": 0.55}), CONFIG)
    message = str(ValidationFailed(report))
    assert "s3.jpg: face_score: value 0.55, allowed [0.7, 1]" in message


def test_report_lists_every_file_and_rule():
    report = validate_face_metadata(_table(s2={"identity_distance": 0.9}), CONFIG)
    assert set(report["files"]) == {"source/s1", "source/s2", "source/s3", "reference/r1",
                                    "reference/r2"}
    assert report["files"]["source/s2"]["failed_rules"] == ["same_person"]
    same = next(r for r in report["rules"] if r["rule"] == "same_person")
    assert same["success"] is False and same["failing_files"] == ["s2.jpg"]


def test_config_rejects_inverted_range():
    with pytest.raises(ValueError, match="min_mask_coverage"):
        ValidationConfig(min_mask_coverage=0.5, max_mask_coverage=0.1)
