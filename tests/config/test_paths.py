"""Issue 21 §1: every folder a run writes or clears lies inside its concept; the parameter check
refuses values no machine can run and names a bad photo folder at once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image

from magicapture_pipeline.config.paths import path_problems
from magicapture_pipeline.config.sections import check_run, check_sections
from magicapture_pipeline.core.training.checkpoints import (
    MARKER_FILE,
    clear_checkpoints,
    prune_checkpoints,
)

STAGES = ["stage_one", "stage_two", "model"]


def _params(concept: str = "alice", **stages: str) -> dict:
    return {"concept": concept, **{s: {"checkpoint_dir": v} for s, v in stages.items()}}


@pytest.mark.parametrize("value", [
    "/srv/shared/photos", "/", ".", "data", "data/06_models", "../elsewhere",
    "data/06_models/alice/../../../../x", "data/06_models/bob/checkpoints", "data/06_models/alice",
])  # fmt: skip
def test_checkpoint_dir_outside_the_concept_is_refused(tmp_path, value):
    problems = path_problems(_params(stage_one=value), STAGES, tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"params:stage_one.checkpoint_dir = {value!r}: resolves to")
    assert "outside" in problems[0] and "/<layer>/alice/" in problems[0]


def test_checkpoint_dir_inside_the_concept_passes(tmp_path):
    inside = str(tmp_path / "data/06_models/alice/checkpoints/stage_two")
    params = _params(stage_one="data/06_models/alice/checkpoints/stage_one", stage_two=inside)
    assert path_problems(params, STAGES, tmp_path) == []


def test_a_configured_data_root_moves_the_rule(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    monkeypatch.setenv("MAGICAPTURE_DATA_ROOT", str(root))
    good = _params(stage_two=str(root / "06_models/alice/ck"))
    assert path_problems(good, STAGES, tmp_path) == []
    bad = _params(stage_two="data/06_models/alice/ck")  # the project's data/ is not the root now
    assert len(path_problems(bad, STAGES, tmp_path)) == 1


def test_a_symlink_escaping_the_concept_is_refused(tmp_path):
    (tmp_path / "data/06_models/alice").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "data/06_models/alice/ck").symlink_to(victim)
    problems = path_problems(_params(stage_one="data/06_models/alice/ck"), STAGES, tmp_path)
    assert len(problems) == 1 and str(victim) in problems[0]


@pytest.mark.parametrize("pretrained,tiny,needle", [
    ("/etc", None, "is not a diffusers model (no model_index.json)"),
    ("./nowhere", None, "is not a diffusers model"),
    ("not a hub id!", None, "neither a local diffusers folder nor a hub id"),
    ("/tmp/tiny_sd", {"sample_size": 64}, "the tiny model is built (written) there"),
    ("data", {"sample_size": 64}, "the tiny model is built (written) there"),
])  # fmt: skip
def test_model_pretrained_must_be_a_model(tmp_path, pretrained, tiny, needle):
    params = {"concept": "alice", "model": {"pretrained": pretrained, "tiny": tiny}}
    problems = path_problems(params, STAGES, tmp_path)
    assert len(problems) == 1 and needle in problems[0], problems
    assert problems[0].startswith(f"params:model.pretrained = {pretrained!r}")


def test_model_pretrained_accepts_hub_ids_and_diffusers_folders(tmp_path):
    folder = tmp_path / "sd"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    for value, tiny in (("stable-diffusion-v1-5/stable-diffusion-v1-5", None),
                        (str(folder), None), ("data/06_models/tiny_sd", {"sample_size": 64})):
        params = {"concept": "alice", "model": {"pretrained": value, "tiny": tiny}}
        assert path_problems(params, STAGES, tmp_path) == [], value


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    return folder


def test_user_folders_are_named_when_missing_empty_or_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"x")
    good = _photos(tmp_path / "good")
    params = {"source_dir": str(tmp_path / "missing"), "reference_dir": str(tmp_path / "empty")}
    problems = path_problems(params, [], tmp_path)
    assert problems[0].startswith(f"source_dir = '{tmp_path / 'missing'}': missing_folder")
    assert problems[1].startswith(f"reference_dir = '{tmp_path / 'empty'}': empty_folder")
    params = {"source_dir": str(tmp_path / "file.png"), "reference_dir": str(good)}
    assert path_problems(params, [], tmp_path) == [
        f"source_dir = '{tmp_path / 'file.png'}': not_a_folder: a file, not a folder of photos"
    ]
    assert not (tmp_path / "missing").exists()  # never created


def test_a_symlink_loop_as_source_dir_is_named_at_once(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    started = time.monotonic()
    problems = path_problems({"source_dir": str(loop)}, [], tmp_path)
    assert time.monotonic() - started < 1.0
    assert problems == [f"source_dir = '{loop}': symlink_loop: the path points back to itself"]


@pytest.mark.parametrize("section,values,field", [
    ("stage_two", {"lora": {"rank": 100000}}, "params:stage_two.lora.rank = 100000"),
    ("stage_two", {"max_steps": 100_000_000}, "params:stage_two.max_steps = 100000000"),
    ("stage_one", {"max_steps": 100_000_000}, "params:stage_one.max_steps = 100000000"),
    ("generation", {"num_inference_steps": 10**9}, "params:generation.num_inference_steps"),
    ("generation", {"resolution": 65536}, "params:generation.resolution = 65536"),
    ("preprocess", {"resolution": 65536}, "params:preprocess.resolution = 65536"),
])  # fmt: skip
def test_values_no_machine_can_run_are_refused(section, values, field):
    problems = check_sections({section: values}, [section])
    assert len(problems) == 1 and problems[0].startswith(field), problems
    assert "(allowed: >= " in problems[0] and "<= " in problems[0]


def test_check_run_names_sections_and_paths_together(tmp_path):
    params = {**_params(stage_one="/"), "generation": {"resolution": 65536}}
    problems = check_run(params, ["stage_one", "generation"], tmp_path)
    assert [p.split(" = ")[0] for p in problems] == [
        "params:generation.resolution", "params:stage_one.checkpoint_dir",
    ]


def _checkpoint(root: Path, step: int, ours: bool) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    if ours:
        (folder / MARKER_FILE).write_text("stage_one\n")
    return folder


def test_clearing_touches_only_checkpoints_the_project_made(tmp_path):
    root = tmp_path / "ck"
    ours = [_checkpoint(root, 1, True), _checkpoint(root, 2, True)]
    theirs = _checkpoint(root, 3, False)
    (root / "photo.png").write_bytes(b"keep")
    (root / "notes").mkdir()
    assert sorted(clear_checkpoints(root)) == ours
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-3", "notes", "photo.png"]
    assert (theirs / "state.json").is_file()
    assert clear_checkpoints(tmp_path / "absent") == []


def test_pruning_keeps_folders_the_project_did_not_make(tmp_path):
    root = tmp_path / "ck"
    theirs = _checkpoint(root, 1, False)
    for step in (2, 3, 4):
        _checkpoint(root, step, True)
    deleted = prune_checkpoints(root, keep=1)
    assert [p.name for p in deleted] == ["checkpoint-2", "checkpoint-3"]
    assert theirs.is_dir() and (root / "checkpoint-4").is_dir()
    assert os.listdir(root) and not (root / "checkpoint-2").exists()
