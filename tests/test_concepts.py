"""A concept is the unit: its name (validated before any I/O), its own paths, its run lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro_datasets.partitions import PartitionedDataset

from conftest import PROJECT_ROOT
from magicapture_pipeline.concepts import (
    CONCEPT_NAME_RULE,
    ConceptLock,
    ConceptLockedError,
    ConceptNameError,
    validate_concept_name,
)
from magicapture_pipeline.core import procfs
from magicapture_pipeline.settings import CONFIG_LOADER_ARGS


@pytest.mark.parametrize("name", ["demo", "alice", "a", "bob-2", "x" * 64, "007"])
def test_valid_names(name):
    assert validate_concept_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", "Alice", "al ice", "a_b", "x" * 65, "é", "a.b", None]
)
def test_invalid_names_are_refused_with_the_rule(name):
    with pytest.raises(ConceptNameError, match="lower-case letters, digits and '-'"):
        validate_concept_name(name)


def loader(env: str = "demo", **runtime) -> OmegaConfigLoader:
    return OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"),
        **{**CONFIG_LOADER_ARGS, "default_run_env": env},
        runtime_params=runtime or None,
    )


def _paths(catalog: dict) -> dict[str, str]:
    return {
        name: str(entry.get("filepath") or entry.get("path"))
        for name, entry in catalog.items()
        if isinstance(entry, dict) and (entry.get("filepath") or entry.get("path"))
    }


SHARED = {"sample_source_images", "sample_reference_images", "sample_manifest"}
RAW = {"source_images", "reference_images", "batch_prompts"}  # user inputs in 01_raw, shared


@pytest.mark.parametrize("env", ["base", "demo"])
def test_every_artifact_path_is_scoped_to_the_concept(env):
    alice = _paths(loader(env, concept="alice")["catalog"])
    bob = _paths(loader(env, concept="bob")["catalog"])
    for name, path in alice.items():
        if name in SHARED or name in RAW:
            assert path == bob[name], name
            continue
        layer = path.split("data/", 1)[1].split("/")
        assert layer[1] == "alice", f"{name}: {path} is not under data/<layer>/alice/"
        assert bob[name] == path.replace("/alice/", "/bob/")
    params = loader(env, concept="alice")["parameters"]
    assert params["concept"] == "alice"
    assert params["tracking"]["experiment_name"] == "magicapture-alice"
    assert params["registry"]["model_name"] == params["model_name"] == "magicapture-alice"
    assert params["generation"]["concept_name"] == "alice"
    for stage in ("stage_one", "stage_two"):
        assert params[stage]["checkpoint_dir"].startswith("data/06_models/alice/checkpoints/")


def test_default_concept_comes_from_the_env():
    assert loader("demo")["parameters"]["concept"] == "demo"
    assert loader("base")["parameters"]["concept"] == "my-concept"


def test_a_bad_name_stops_the_catalog_naming_the_rule():
    with pytest.raises(Exception, match="concept name '../x' is invalid: use " + CONCEPT_NAME_RULE):
        loader("demo", concept="../x")["catalog"]


def test_partitioned_outputs_are_rewritten_from_scratch():
    catalog = loader("demo", concept="alice")["catalog"]
    partitioned = {
        name
        for name, entry in catalog.items()
        if isinstance(entry, dict) and entry.get("type") == "partitions.PartitionedDataset"
    }
    assert {"face_crops", "face_masks", "generated_images", "attention_heatmaps"} <= partitioned
    for name in partitioned - SHARED:
        assert catalog[name].get("overwrite") is True, name


def test_overwrite_removes_partitions_of_an_earlier_run(tmp_path):
    dataset = PartitionedDataset(
        path=str(tmp_path / "crops"), dataset="text.TextDataset", overwrite=True
    )
    dataset.save({"source/old_photo": "a", "source/kept": "b"})
    dataset.save({"source/kept": "c"})
    assert sorted(p.name for p in (tmp_path / "crops").rglob("*") if p.is_file()) == ["kept"]


@pytest.mark.integration
def test_a_bad_name_is_refused_by_kedro_run_before_any_io(project_copy):
    env = {**os.environ, "MAGICAPTURE_MLFLOW": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipelines=preprocess", "--env=demo",
         "--params=concept=../escape"],
        cwd=project_copy, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode != 0
    output = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    assert "concept name '../escape' is invalid: use " + CONCEPT_NAME_RULE in output
    written = [p for p in (project_copy / "data").rglob("*") if p.is_file()]
    assert written == [], written
    assert not (project_copy / "escape").exists() and not (project_copy / "mlflow.db").exists()


# -- the run lock ------------------------------------------------------------------------------


def test_second_lock_on_a_running_concept_is_refused(tmp_path):
    with ConceptLock(tmp_path, "alice"):
        refused = f"'alice' is already running .*pid {os.getpid()}"
        with pytest.raises(ConceptLockedError, match=refused):
            ConceptLock(tmp_path, "alice").acquire()
        ConceptLock(tmp_path, "bob").acquire().release()  # another concept is free
    ConceptLock(tmp_path, "alice").acquire().release()  # released at exit


def write_lock(tmp_path: Path, **owner) -> Path:
    path = tmp_path / "data/.locks/alice.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"concept": "alice", "pid": os.getpid(), "host": socket.gethostname(),
              "started": time.time(), "process_start": None, "note": ""}
    path.write_text(json.dumps({**record, **owner}))
    return path


def test_lock_of_a_dead_process_is_recovered(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(tmp_path, pid=dead.pid)
    lock = ConceptLock(tmp_path, "alice").acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()


def test_lock_of_a_killed_process_not_yet_reaped_is_recovered(tmp_path):
    """A SIGKILLed holder that nobody has reaped yet (a zombie: its parent, a Ray raylet or a
    container's PID 1, has not waited for it) still answers kill(pid, 0); it holds nothing. Seen:
    a Ray node lost mid-run, the retry refused for the dead attempt's zombie."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder.kill()
        deadline = time.monotonic() + 30
        while not procfs.is_zombie(procfs.stat_fields(holder.pid)):  # dead, not reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        write_lock(tmp_path, pid=holder.pid)
        lock = ConceptLock(tmp_path, "alice").acquire()
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        holder.wait()


def test_lock_of_a_reused_pid_is_recovered(tmp_path):
    write_lock(tmp_path, process_start="1")  # our pid, but another process start time
    ConceptLock(tmp_path, "alice").acquire().release()


def test_lock_from_another_host_waits_for_its_expiry(tmp_path):
    path = write_lock(tmp_path, host="some-other-node", pid=1)
    with pytest.raises(ConceptLockedError, match="some-other-node"):
        ConceptLock(tmp_path, "alice", ttl_s=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))  # its holder stopped refreshing it two minutes ago
    ConceptLock(tmp_path, "alice", ttl_s=60).acquire().release()


def test_held_lock_is_refreshed(tmp_path):
    lock = ConceptLock(tmp_path, "alice", ttl_s=0.3, heartbeat_s=0.05).acquire()
    try:
        old = time.time() - 100
        os.utime(lock.path, (old, old))
        deadline = time.time() + 10
        while lock.path.stat().st_mtime < time.time() - 50 and time.time() < deadline:
            time.sleep(0.05)
        assert lock.path.stat().st_mtime > time.time() - 50
    finally:
        lock.release()


@pytest.mark.integration
def test_kedro_run_on_a_locked_concept_is_refused(project_copy, monkeypatch):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "0")
    bootstrap_project(project_copy)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time; from magicapture_pipeline.concepts import ConceptLock;"
         f"ConceptLock({str(project_copy)!r}, 'alice').acquire(); print('held', flush=True);"
         "time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with KedroSession.create(
            project_path=project_copy, env="demo", runtime_params={"concept": "alice"}
        ) as session:
            with pytest.raises(ConceptLockedError, match=f"pid {holder.pid}"):
                session.run(pipeline_names=["promote"])
    finally:
        holder.kill()
        holder.wait()
    assert not (project_copy / "data/08_reporting/alice").exists()


def test_dvc_concepts_and_catalog_agree():
    """params.yaml's concepts are valid names and include the env's default concept (what
    ``make demo`` builds); every dvc.yaml stage runs once per listed concept and writes only
    under that concept's ``data/<layer>/<concept>/`` (break caught: an out without ``${key}``)."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    concepts = list(params["concepts"])
    assert concepts and [validate_concept_name(name) for name in concepts] == concepts
    env_globals = PROJECT_ROOT / "conf" / params["kedro_env"] / "globals.yml"
    assert yaml.safe_load(env_globals.read_text())["concept_name"] in concepts
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, stage in stages.items():
        assert stage["foreach"] == "${concepts}", name
        assert "--params=concept=${key}," in stage["do"]["cmd"][-1], name
        for out in stage["do"]["outs"]:
            path = out if isinstance(out, str) else next(iter(out))
            parts = path.split("/")
            assert parts[0] == "data" and parts[2] == "${key}", (name, path)


@pytest.mark.integration
@pytest.mark.slow
def test_rerun_after_the_photos_changed_keeps_nothing_of_the_old_ones(project_copy, tmp_path,
                                                                      monkeypatch):
    """Same concept, a new source folder: its partitions and tables hold only the new photos."""
    from PIL import Image

    from conftest import run_kedro_here
    from magicapture_pipeline.core.faces.sample_data import build_sample_set

    images = build_sample_set("source", 5)
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, picks in ((first, images[:3]), (second, images[3:])):
        folder.mkdir()
        for image in picks:
            Image.fromarray(image.pixels).save(folder / image.file_name)
    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "0")  # the files are under test, not the tracking
    for folder in (first, second):
        done = run_kedro_here(project_copy, "run", "--pipelines=preprocess", "--env=demo",
                              f"--params=concept=alice,source_dir={folder}")
        assert done.returncode == 0, done.stderr[-3000:]
    new = {image.file_name.removesuffix(".png") for image in images[3:]}
    for layer in ("data/02_intermediate/alice/face_crops", "data/02_intermediate/alice/face_masks",
                  "data/08_reporting/alice/mask_overlays"):
        stems = {p.stem for p in (project_copy / layer).rglob("*.png") if "source" in p.parts}
        assert stems == new, (layer, stems)
    training = json.loads(
        (project_copy / "data/05_model_input/alice/training_set.json").read_text()
    )
    listed = training["items"] + training.get("held_out", [])
    assert {i["id"] for i in listed if i["role"] == "source"} == new
    metadata = (project_copy / "data/03_primary/alice/face_metadata.csv").read_text()
    assert not any(image.file_name.removesuffix(".png") in metadata for image in images[:3])
    assert len(list(first.iterdir())) == 3  # raw inputs untouched
