"""Nothing half-written: files and the exported concept are old or new, never a mix (issue 14)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from full_disk import tiny_tmpfs
from magicapture_pipeline.core import atomic
from magicapture_pipeline.core.generation import export as concept_io


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_json_writer_replaces_whole_and_leaves_no_temporary(tmp_path):
    """The one JSON writer of state files (batch attempts/result, progress): old or new, whole."""
    target = tmp_path / "state" / "result.json"
    atomic.write_json(target, {"status": "failed", "path": Path("a")})
    assert json.loads(target.read_text()) == {"status": "failed", "path": "a"}
    assert target.read_text().startswith('{\n  "status"')  # indent=2 unless asked otherwise
    atomic.write_json(target, {"stage": "done"}, indent=None)
    assert target.read_text() == '{"stage": "done"}'
    assert _no_temporaries(target.parent)


def test_file_write_failure_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic.write_text(target, '{"old": 1}')
    monkeypatch.setattr(Path, "write_bytes", _enospc)
    with pytest.raises(atomic.WriteFailed) as caught:
        atomic.write_text(target, '{"new": 2}')
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value) and "no space left" in str(caught.value)
    monkeypatch.undo()
    assert target.read_text() == '{"old": 1}'
    assert _no_temporaries(tmp_path)


def test_concept_export_failing_midway_leaves_the_previous_concept(tmp_path, monkeypatch):
    import safetensors.torch

    folder = tmp_path / "concept"
    concept_io.export(folder, {"<v1>": torch.ones(8), "<v2>": torch.zeros(8)}, None)
    before = _snapshot(folder)
    calls = []

    def second_file_fails(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            _enospc()
        return real(tensors, path, *args, **kwargs)

    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", second_file_fails)
    with pytest.raises(atomic.WriteFailed, match=str(folder)):
        concept_io.export(folder, {"<v1>": torch.full((8,), 5.0), "<v2>": torch.ones(8)}, None)
    assert len(calls) == 2  # the first new file was written, then the "disk" filled up
    assert _snapshot(folder) == before
    assert _no_temporaries(tmp_path)
    monkeypatch.undo()
    info = concept_io.export(folder, {"<v1>": torch.full((8,), 5.0)}, None)
    assert [t["token"] for t in info["tokens"]] == ["<v1>"]
    assert sorted(p.name for p in folder.iterdir()) == ["concept.json", "token_1_v1.safetensors"]


def _tiny_tmpfs(where: Path, size: str = "192k"):
    return tiny_tmpfs(where, size)


def test_full_disk_and_read_only_folder_on_a_real_filesystem(tmp_path):
    with _tiny_tmpfs(tmp_path / "disk") as disk:
        folder = disk / "concept"
        concept_io.export(folder, {"<v1>": torch.ones(16)}, None)
        before = _snapshot(folder)
        too_big = {"<v1>": torch.ones(16), "<v2>": torch.ones(200_000)}  # 800 kB > 192 kB
        with pytest.raises(atomic.WriteFailed) as caught:
            concept_io.export(folder, too_big, None)
        assert caught.value.errno == errno.ENOSPC
        assert str(folder) in str(caught.value)
        assert _snapshot(folder) == before and _no_temporaries(disk)

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(atomic.WriteFailed) as caught:
            concept_io.export(folder, {"<v1>": torch.zeros(16)}, None)
        assert caught.value.errno == errno.EROFS and str(folder) in str(caught.value)
        assert _snapshot(folder) == before
