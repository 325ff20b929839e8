"""Issue 21 §1 and §5: hostile manifests and batch options are refused before any worker starts,
and no manifest makes a worker write or delete outside its concept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from magicapture_pipeline.batch.manifest import MAX_CONCEPTS, ManifestError, load_manifest
from magicapture_pipeline.batch.preflight import check_batch_id, concept_problems

BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
concepts: [{name: x, params: {generation: {negative_prompt: *i}}}]
"""


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(BOMB)
    assert path.stat().st_size < 1024
    started = time.monotonic()
    with pytest.raises(ManifestError, match=r"m.yaml: refused: expands to more than 100000 values"):
        load_manifest(path)
    assert time.monotonic() - started < 1.0


def test_deeply_nested_yaml_is_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("concepts: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ManifestError, match=r"m.yaml: refused: nested deeper than 20 levels"):
        load_manifest(path)


def test_too_many_concepts_are_refused_yaml_and_csv(tmp_path):
    rows = [{"name": f"c{i}"} for i in range(MAX_CONCEPTS + 1)]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"concepts": rows}))
    with pytest.raises(ManifestError, match=rf"refused: {MAX_CONCEPTS + 1} concepts, more than"):
        load_manifest(path)
    csv = tmp_path / "m.csv"
    csv.write_text("name\n" + "".join(f"c{i}\n" for i in range(MAX_CONCEPTS + 1)))
    with pytest.raises(ManifestError, match=rf"refused: more than {MAX_CONCEPTS} concepts"):
        load_manifest(csv)
    rows.pop()
    path.write_text(yaml.safe_dump({"concepts": rows}))
    assert len(load_manifest(path).concepts) == MAX_CONCEPTS


def test_a_huge_manifest_file_is_refused_by_size(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("concepts:\n  - name: a\n" + "#" * (1 << 20) + "\n")
    with pytest.raises(ManifestError, match=r"refused: \d+ bytes, more than 1048576"):
        load_manifest(path)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("name,stage_two.max_steps\nalice,7\n".encode("utf-8-sig"))
    manifest = load_manifest(path)
    assert manifest.concepts[0].name == "alice"
    assert manifest.concepts[0].runtime_params()["stage_two"] == {"max_steps": 7}
    yml = tmp_path / "m.yaml"
    yml.write_bytes("concepts:\n  - name: bob\n".encode("utf-8-sig"))
    assert load_manifest(yml).concepts[0].name == "bob"


@pytest.mark.parametrize("batch_id", ["../../x", "a/b", "..", ".hidden", "x" * 65, ""])
def test_batch_ids_that_leave_the_batch_folder_are_refused(batch_id):
    with pytest.raises(ManifestError, match=r"--batch-id .*no '/' or '\.\.'"):
        check_batch_id(batch_id)


def test_batch_id_rule_accepts_the_generated_form():
    assert check_batch_id("20261206-131600-a1b2c3") == "20261206-131600-a1b2c3"


BASE = {"concept": "demo", "stage_two": {"max_steps": 10, "lora": {"rank": 4}},
        "generation": {"resolution": 64}, "model": {"pretrained": "a/b"}}


def test_override_keys_are_checked_against_the_configs(tmp_path):
    runtime = {"concept": "alice", "stage_twoo": {"max_steps": 1},
               "stage_two": {"lora": {"rnak": 8}, "max_steps": 10**8},
               "stage_one": {"checkpoint_dir": "/srv/x"}}
    problems = concept_problems({**BASE, "stage_one": {}}, tmp_path, "alice", runtime)
    assert problems[0] == (
        "params.stage_twoo.max_steps: unknown parameter (no such key in the env's parameters)"
    )
    text = "\n".join(problems)
    assert "params:stage_two.lora.rnak: unknown key" in text
    assert "params:stage_two.max_steps = 100000000" in text
    assert "params:stage_one.checkpoint_dir = '/srv/x': resolves to /srv/x, outside" in text
    assert len(problems) == 4


# -- real processes --------------------------------------------------------------------------


def _run(project: Path, manifest: Path, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "magicapture_pipeline.batch", str(manifest), "--env", "demo",
         "--project", str(project), *options],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "shared" / "photos"
    victim.mkdir(parents=True)
    (victim / "precious.jpg").write_bytes(b"do not delete")
    (victim / "checkpoint-1").mkdir()  # even a checkpoint-looking folder the project never made
    return victim


@pytest.mark.integration
def test_batch_refuses_paths_keys_and_folders_before_any_worker(project_copy, tmp_path):
    victim = _victim(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"concepts": [
        {"name": "alice", "params": {"stage_one.checkpoint_dir": str(victim)}},
        {"name": "bob", "source_dir": str(empty), "params": {"stage_two.unknown_knob": 1}},
        {"name": "carol", "params": {"stage_two.lora.rank": 100000}},
    ]}))
    done = _run(project_copy, manifest)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert lines[0] == "manifest refused:"
    assert any("'alice'" in line and f"resolves to {victim}" in line for line in lines)
    assert any("'bob'" in line and "params:stage_two.unknown_knob: unknown key" in line
               for line in lines)
    assert any("'bob'" in line and f"source_dir = '{empty}': empty_folder" in line
               for line in lines)
    assert any("'carol'" in line and "params:stage_two.lora.rank = 100000" in line
               for line in lines)
    assert sorted(p.name for p in victim.iterdir()) == ["checkpoint-1", "precious.jpg"]
    assert list(empty.iterdir()) == []
    assert not (project_copy / "data/08_reporting/batch").exists() or not any(
        (project_copy / "data/08_reporting/batch").iterdir()
    )


@pytest.mark.integration
def test_batch_id_outside_the_batch_folder_is_refused(project_copy, tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("concepts:\n  - name: alice\n")
    done = _run(project_copy, manifest, "--batch-id", "../../x")
    assert done.returncode == 2
    assert "--batch-id '../../x'" in done.stderr
    assert not (project_copy / "data/x").exists() and not (project_copy / "x").exists()


@pytest.mark.integration
def test_a_worker_checks_before_it_clears(project_copy, tmp_path):
    """The worker (a real process, as the local engine starts it) given a job the CLI never
    checked: the parameter check refuses the folder, nothing in it is deleted."""
    victim = _victim(tmp_path)
    (victim / "checkpoint-2").mkdir()
    (victim / "checkpoint-2" / ".magicapture-checkpoint").write_text("marked, but outside\n")
    state = project_copy / "data/08_reporting/batch/b1/alice"
    state.mkdir(parents=True)
    job = {"name": "alice", "project": str(project_copy), "env": "demo", "batch_id": "b1",
           "state_dir": str(state),
           "runtime_params": {"concept": "alice", "stage_one": {"checkpoint_dir": str(victim)}}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{project_copy / 'mlflow.db'}"}
    done = subprocess.run(
        [sys.executable, "-m", "magicapture_pipeline.batch.worker", str(tmp_path / "job.json")],
        cwd=project_copy, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in victim.iterdir()) == [
        "checkpoint-1", "checkpoint-2", "precious.jpg"
    ]
    result = json.loads((state / "result.json").read_text())
    assert result["status"] == "failed"
    assert "params:stage_one.checkpoint_dir" in result["reason"]
    assert "nothing was run or cleared" in result["reason"]


@pytest.mark.integration
def test_demo_env_never_fills_a_user_folder(project_copy, tmp_path, monkeypatch):
    """`kedro run --env=demo` with an empty and a missing photo folder: refused naming both
    before any node, and neither folder gains a file (before: 5 PNGs + MANIFEST.json)."""
    from conftest import run_kedro

    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps the error at the terminal's width
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    done = run_kedro(project_copy, "run", "--pipelines=preprocess", "--env=demo",
                     f"--params=source_dir={empty},reference_dir={missing}", timeout=300)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0
    assert f"source_dir = '{empty}': empty_folder" in output
    assert f"reference_dir = '{missing}': missing_folder" in output
    assert list(empty.iterdir()) == [] and not missing.exists()
    assert not list((project_copy / "data").rglob("*.png"))


def test_the_demo_dataset_writes_only_into_its_own_folder(tmp_path, monkeypatch):
    """The dataset itself (what runs when no hook guards it): a user folder stays empty."""
    from kedro.io import DatasetError

    from magicapture_pipeline.datasets.raw_images import SampleImageFolderDataset

    monkeypatch.chdir(tmp_path)
    user = tmp_path / "user"
    user.mkdir()
    dataset = SampleImageFolderDataset(path=str(user), role="source", count=1)
    with pytest.raises(DatasetError, match=r"user: empty_folder"):
        dataset.load()
    assert list(user.iterdir()) == []
    Image.new("RGB", (8, 8)).save(user / "a.png")
    assert set(dataset.load()) == {"a"}
