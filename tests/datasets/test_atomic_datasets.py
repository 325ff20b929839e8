"""Reports and metrics are the old file or the new, never half (issue 14 §1)."""

from __future__ import annotations

import errno
import json
import os

import pandas as pd
import pytest
from kedro.io import DatasetError

from full_disk import tiny_tmpfs
from magicapture_pipeline.datasets.atomic import (
    CSVDataset,
    JSONDataset,
    OptionalCSVDataset,
    TextDataset,
)


def test_an_optional_history_loads_empty_when_missing_and_saves_atomically(tmp_path):
    """A concept trained before validation existed has no validation history: evaluate's card
    reads an empty frame (a full run failed on the missing file); a written one loads as saved."""
    history = OptionalCSVDataset(filepath=str(tmp_path / "h.csv"), save_args={"index": False})
    empty = history.load()
    assert isinstance(empty, pd.DataFrame) and empty.empty
    history.save(pd.DataFrame({"step": [2, 4], "exported": [0, 1]}))
    assert history.load()["step"].tolist() == [2, 4]
    assert _no_temporaries(tmp_path)


def _no_temporaries(folder) -> bool:
    return not [p for p in os.listdir(folder) if p.startswith(".")]


def test_save_and_load_like_the_library(tmp_path):
    report = JSONDataset(filepath=str(tmp_path / "r.json"), save_args={"indent": 2})
    report.save({"a": 1})
    assert report.load() == {"a": 1} and (tmp_path / "r.json").read_text().startswith("{\n")
    table = CSVDataset(filepath=str(tmp_path / "t.csv"), save_args={"index": False})
    table.save(pd.DataFrame({"x": [1, 2]}))
    assert table.load()["x"].tolist() == [1, 2]
    text = TextDataset(filepath=str(tmp_path / "t.md"))
    text.save("| a |")
    assert text.load() == "| a |"
    assert _no_temporaries(tmp_path)


def test_a_write_that_fails_midway_keeps_the_previous_report(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    dataset = JSONDataset(filepath=str(path))
    dataset.save({"csim": 0.5})

    real_dump = json.dump

    def dump_then_fill_the_disk(data, handle, **kwargs):
        handle.write('{"csim": 0.')  # half a document reaches the file...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ...then the disk is full

    monkeypatch.setattr(json, "dump", dump_then_fill_the_disk)
    with pytest.raises(DatasetError) as caught:
        dataset.save({"csim": 0.9})
    monkeypatch.setattr(json, "dump", real_dump)
    assert str(path) in str(caught.value) and "no space left" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    assert json.loads(path.read_text()) == {"csim": 0.5}
    assert _no_temporaries(tmp_path)


def test_read_only_folder_names_the_path(tmp_path):
    import subprocess

    with tiny_tmpfs(tmp_path / "disk") as disk:
        dataset = CSVDataset(filepath=str(disk / "h.csv"))
        dataset.save(pd.DataFrame({"x": [1]}))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(DatasetError, match="could not write " + str(disk / "h.csv")):
            dataset.save(pd.DataFrame({"x": [2]}))
        assert dataset.load()["x"].tolist() == [1]
