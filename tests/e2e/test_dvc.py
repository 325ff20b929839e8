"""DVC: the project's dvc.yaml matches the Kedro pipelines and catalog; repro is idempotent and a
parameter change reruns only what is downstream of it.

The repro behaviour is checked fast on a small self-contained dvc.yaml in a temporary git repo; the
real stages are the slow test: DVC over the outputs of the suite's shared demo chain (``demo_run``),
committed, then a knob that reruns three of the stages for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT
from e2e.demo_fingerprint import SHRINK

DVC_ENV = {
    **os.environ,
    "DVC_NO_ANALYTICS": "1",
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}


def run(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        list(args),
        cwd=cwd,
        env=DVC_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def git_repo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    run(folder, "git", "init", "-q")
    run(folder, "git", "config", "user.email", "test@example.com")
    run(folder, "git", "config", "user.name", "test")
    run(folder, "dvc", "init", "-q")
    run(folder, "dvc", "config", "core.analytics", "false")
    return folder


CONCEPT = "some-concept"  # what `${key}` stands for when a test reads the foreach stages


def dvc_stages() -> dict:
    """Stage name -> its ``do`` body with ``${key}`` read as :data:`CONCEPT`."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert stage.get("foreach") == "${concepts}", f"stage {name} is not per concept"
    return {
        name: yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${key}", CONCEPT))
        for name, stage in stages.items()
    }


def out_paths(stage: dict) -> set[str]:
    paths = set()
    for section in ("outs", "metrics", "plots"):
        for entry in stage.get(section, []):
            paths.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def catalog_paths(env: str = "base", concept: str = CONCEPT) -> dict[str, str]:
    """Dataset name -> its ``filepath``/``path`` relative to the project, for ``env``."""
    from kedro.config import OmegaConfigLoader

    from magicapture_pipeline.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"),
        **{**CONFIG_LOADER_ARGS, "default_run_env": env},
        runtime_params={"concept": concept},
    )
    paths = {}
    for name, entry in loader["catalog"].items():
        if isinstance(entry, dict) and not name.startswith("_"):
            location = entry.get("filepath") or entry.get("path")
            if location:
                paths[name] = str(location).removeprefix(f"{PROJECT_ROOT}/")
    return paths


def test_dvc_params_file_selects_the_demo_env_and_concept():
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert params["kedro_env"] == "demo"
    assert list(params["concepts"]) == ["demo"]
    assert "source_dir=data/01_raw/demo/source" in params["concepts"]["demo"]["kedro_params"]
    assert "analytics = false" in (PROJECT_ROOT / ".dvc" / "config").read_text()


def test_every_stage_runs_its_pipeline_per_concept_in_the_chosen_env():
    from magicapture_pipeline.pipelines import CUSTOMIZE_CHAIN

    stages = dvc_stages()
    assert list(stages) == list(CUSTOMIZE_CHAIN)
    for name, stage in stages.items():
        env = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["kedro_env"]
        assert stage["cmd"] == [
            "python -m magicapture_pipeline.dvc_stages "
            f"--generated-for={env} --env=${{kedro_env}}",
            f"kedro run --pipelines={name} --env=${{kedro_env}} "
            f"--params=concept={CONCEPT},${{item.kedro_params}}",
        ]
        assert {"params.yaml": ["kedro_env", f"concepts.{CONCEPT}"]} in stage["params"]
        assert not any(str(p).startswith("data/01_raw") for p in out_paths(stage))
        assert all(f"/{CONCEPT}/" in p for p in out_paths(stage)), name
    assert stages["evaluate"]["metrics"] == [f"data/08_reporting/{CONCEPT}/metrics.json"]


def test_outs_are_catalog_paths_and_never_versioned():
    from kedro.config import OmegaConfigLoader

    from magicapture_pipeline.settings import CONFIG_LOADER_ARGS

    catalog = catalog_paths()
    known = set(catalog.values())
    for name, stage in dvc_stages().items():
        missing = {p for p in out_paths(stage) if p not in known}
        assert not missing, f"stage {name}: outs not in the catalog: {missing}"
    loader = OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "demo"}
    )
    for name, entry in loader["catalog"].items():
        assert not (isinstance(entry, dict) and entry.get("versioned")), name


def test_each_stage_lists_what_its_pipeline_writes():
    """Every file output of a pipeline is an out of its stage (else DVC would miss a change), and
    every input of a stage is a parameter or a file (a stage is its own ``kedro run``)."""
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    from magicapture_pipeline.tracking.catalog import RUN_DATASET

    bootstrap_project(PROJECT_ROOT)
    catalog = catalog_paths()
    stages = dvc_stages()
    assert set(stages) <= set(pipelines), "a DVC stage names a pipeline that does not exist"
    for name, stage in stages.items():
        written = {catalog[d] for d in pipelines[name].outputs() if d in catalog}
        written -= {p for p in written if p.startswith("data/01_raw")}
        assert written <= out_paths(stage), f"stage {name} misses {written - out_paths(stage)}"
        deps = set(stage["deps"])
        for dataset in pipelines[name].inputs():
            # each stage runs in a process of its own: what it reads must be on disk (or be the
            # run's own MLflow run, which the tracking hook puts in every run's catalog)
            persisted = dataset in catalog or dataset.startswith("params:")
            assert persisted or dataset in ("parameters", RUN_DATASET), f"{name} reads {dataset}"
            if dataset in catalog and not catalog[dataset].startswith("data/01_raw"):
                assert catalog[dataset] in deps, f"stage {name} misses dep {catalog[dataset]}"


def test_dvc_yaml_is_the_generators_output():
    """dvc.yaml is generated (issue 17 §3): edit the pipelines or the catalog, run make dvc-yaml."""
    from magicapture_pipeline.dvc_stages import render

    assert (PROJECT_ROOT / "dvc.yaml").read_text() == render(), "dvc.yaml is stale: make dvc-yaml"


def test_code_deps_are_the_import_closure():
    """Editing the model family or SDXL code reruns training (they were missing before)."""
    stages = dvc_stages()
    for name in ("train_stage_one", "train_stage_two"):
        for module in ("families", "sdxl", "loading", "tokens", "attention"):
            assert f"src/magicapture_pipeline/core/models/{module}.py" in stages[name]["deps"]
        assert "src/magicapture_pipeline/core/losses.py" in stages[name]["deps"]
    assert "src/magicapture_pipeline/serving" in stages["register"]["deps"]
    for stage in stages.values():
        for dep in stage["deps"]:
            assert (PROJECT_ROOT / dep).exists() or "${key}" in dep or dep.startswith("data/"), dep


def test_params_are_the_keys_each_stage_reads_in_the_tracked_env():
    env = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["kedro_env"]
    stages = dvc_stages()
    files = {next(iter(p)) for stage in stages.values() for p in stage["params"]}
    assert all(f.startswith(("conf/base/", f"conf/{env}/")) for f in files - {"params.yaml"})
    assert {f"conf/{env}/parameters_train_stage_two.yml": ["stage_two"]} in stages[
        "train_stage_two"
    ]["params"]
    register = {next(iter(p)) for p in stages["register"]["params"]}
    assert "conf/base/parameters_serving.yml" in register
    assert "conf/base/parameters_serving.yml" not in {
        next(iter(p)) for p in stages["evaluate"]["params"]
    }


def test_a_stage_refuses_an_env_dvc_yaml_was_not_generated_for(capsys):
    from magicapture_pipeline.dvc_stages import main

    assert main(["--generated-for=demo", "--env=demo"]) == 0
    assert main(["--generated-for=demo", "--env=base"]) == 1
    assert "make dvc-yaml" in capsys.readouterr().err


TOY_DVC = """
stages:
  prepare:
    cmd: python prepare.py
    deps: [prepare.py, raw.txt]
    params: [prepare.size]
    outs: [prepared.txt]
  train:
    cmd: python train.py
    deps: [train.py, prepared.txt]
    params: [train.lr]
    outs: [model.txt]
    metrics:
      - metrics.json:
          cache: false
"""
PREPARE = """import yaml
size = yaml.safe_load(open("params.yaml"))["prepare"]["size"]
open("prepared.txt", "w").write(open("raw.txt").read() * size)
"""
TRAIN = """import json, yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
open("model.txt", "w").write(f"{open('prepared.txt').read()}:{lr}")
json.dump({"lr": lr}, open("metrics.json", "w"))
"""


@pytest.mark.integration
def test_repro_is_idempotent_and_reruns_only_downstream(tmp_path):
    repo = git_repo(tmp_path / "repo")
    (repo / "dvc.yaml").write_text(TOY_DVC)
    (repo / "prepare.py").write_text(PREPARE)
    (repo / "train.py").write_text(TRAIN)
    (repo / "params.yaml").write_text("prepare:\n  size: 2\ntrain:\n  lr: 0.1\n")
    (repo / "raw.txt").write_text("ab")
    first = run(repo, "dvc", "repro").stdout
    assert "Running stage 'prepare'" in first and "Running stage 'train'" in first
    assert (repo / "model.txt").read_text() == "abab:0.1"
    second = run(repo, "dvc", "repro").stdout
    assert "Running stage" not in second
    (repo / "params.yaml").write_text("prepare:\n  size: 2\ntrain:\n  lr: 0.2\n")
    third = run(repo, "dvc", "repro").stdout
    assert "Running stage 'train'" in third and "Running stage 'prepare'" not in third
    assert (repo / "model.txt").read_text() == "abab:0.2"
    assert '"lr": 0.2' in run(repo, "dvc", "metrics", "show", "--json").stdout
    # a local remote: push, lose the outputs, pull them back
    run(repo, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run(repo, "dvc", "push")
    (repo / "model.txt").unlink()
    run(repo, "dvc", "pull")
    assert (repo / "model.txt").read_text() == "abab:0.2"


FOREACH_DVC = """
stages:
  prepare:
    foreach: ${concepts}
    do:
      cmd: python prepare.py ${key}
      deps: [prepare.py, "raw/${key}.txt"]
      params: ["concepts.${key}"]
      outs: ["out/${key}/prepared.txt"]
  train:
    foreach: ${concepts}
    do:
      cmd: python train.py ${key}
      deps: [train.py, "out/${key}/prepared.txt"]
      outs: ["out/${key}/model.txt"]
"""
FOREACH_PREPARE = """import sys, pathlib, yaml
key = sys.argv[1]
size = yaml.safe_load(open("params.yaml"))["concepts"][key]["size"]
pathlib.Path(f"out/{key}").mkdir(parents=True, exist_ok=True)
open(f"out/{key}/prepared.txt", "w").write(open(f"raw/{key}.txt").read() * size)
"""
FOREACH_TRAIN = """import sys
key = sys.argv[1]
open(f"out/{key}/model.txt", "w").write(open(f"out/{key}/prepared.txt").read() + "!")
"""


@pytest.mark.integration
def test_foreach_concepts_rerun_only_the_changed_concept(tmp_path):
    """The shape of dvc.yaml: one chain per concept; one concept's change reruns only it."""
    repo = git_repo(tmp_path / "repo")
    (repo / "dvc.yaml").write_text(FOREACH_DVC)
    (repo / "prepare.py").write_text(FOREACH_PREPARE)
    (repo / "train.py").write_text(FOREACH_TRAIN)
    (repo / "raw").mkdir()
    (repo / "raw/alice.txt").write_text("a")
    (repo / "raw/bob.txt").write_text("b")
    params = "concepts:\n  alice: {size: 2}\n  bob: {size: %d}\n"
    (repo / "params.yaml").write_text(params % 3)
    first = run(repo, "dvc", "repro").stdout
    for stage in ("prepare@alice", "prepare@bob", "train@alice", "train@bob"):
        assert f"Running stage '{stage}'" in first
    assert (repo / "out/alice/model.txt").read_text() == "aa!"
    assert (repo / "out/bob/model.txt").read_text() == "bbb!"
    assert "Running stage" not in run(repo, "dvc", "repro").stdout
    (repo / "params.yaml").write_text(params % 1)
    third = run(repo, "dvc", "repro", "--no-run-cache").stdout
    assert "Running stage 'prepare@bob'" in third and "Running stage 'train@bob'" in third
    assert "Running stage 'prepare@alice'" not in third
    assert "Running stage 'train@alice'" not in third
    assert (repo / "out/bob/model.txt").read_text() == "b!"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("demo_run")
def test_real_chain_commit_then_noop_then_partial(demo_run, tmp_path, monkeypatch):
    """DVC over the real stages, on the outputs of the suite's shared demo chain.

    ``demo_run`` ran the seven pipelines of ``customize`` once (the golden test reads it); a
    second whole chain under ``dvc repro`` (eight fresh ``kedro`` processes, ~75 CPU s) would redo
    that work. Instead its outputs are copied into a DVC repo and committed: ``dvc commit`` fails
    if any stage's declared out or dep is missing, so dvc.yaml is checked against everything the
    real chain writes. Then: nothing reruns; a post-processing and a serving knob rerun exactly
    postprocess, evaluate and register, for real (``kedro run`` per stage, each from its persisted
    inputs, after DVC deleted its outs); and that rerun leaves nothing stale. That every stage
    reads only files and parameters is checked above (each stage is a process of its own).
    """
    source, done = demo_run
    assert done.returncode == 0, done.stderr[-4000:]
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "data", "mlflow.db", "mlartifacts", "build", "__pycache__",
        "*.egg-info", "local",
    )  # fmt: skip
    shutil.copytree(PROJECT_ROOT, project, ignore=ignore)
    shutil.copytree(source / "data", project / "data", ignore=shutil.ignore_patterns(".locks"))
    (project / "conf" / "local").mkdir(exist_ok=True)
    shutil.rmtree(project / ".dvc", ignore_errors=True)
    (project / ".dvcignore").unlink(missing_ok=True)
    # the concept's kedro_params are those the demo chain ran with (a change there reruns all)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["concepts"]["demo"]["kedro_params"] += f",{SHRINK}"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    git_repo(project)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "copy")
    monkeypatch.setitem(DVC_ENV, "MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    # Untracked Kedro runs: no MLflow start-up, store or registration in each (DVC decides what
    # reruns from dvc.yaml, the params and the files, none of which tracking touches).
    monkeypatch.setitem(DVC_ENV, "MAGICAPTURE_MLFLOW", "0")
    run(project, "dvc", "commit", "--force", timeout=600)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == {f"{stage}@demo" for stage in dvc_stages()}
    assert "Running stage" not in run(project, "dvc", "repro", timeout=600).stdout

    postprocessed = project / "data/07_model_output/demo/postprocessed"
    upscaled = _image_sizes(postprocessed)
    knob = project / "conf" / "demo" / "parameters_postprocess.yml"
    knob.write_text(knob.read_text() + "  super_resolution: {enabled: false}\n")
    # the demo's metrics do not change with the upscale (no face is found, CLIP is offline), so
    # register reruns only for a knob of its own
    serving = project / "conf" / "base" / "parameters_serving.yml"
    serving.write_text(serving.read_text() + "  limits: {max_rows: 5}\n")
    third = run(project, "dvc", "repro", timeout=900).stdout
    rerun = {stage for stage in dvc_stages() if f"Running stage '{stage}@demo'" in third}
    assert rerun == {"postprocess", "evaluate", "register"}, third[-3000:]
    # postprocess really ran with the new knob: its images are no longer Real-ESRGAN's x4
    plain = _image_sizes(postprocessed)
    assert plain and set(plain) == set(upscaled)
    assert all(4 * plain[name][0] == upscaled[name][0] for name in plain), (plain, upscaled)
    assert "Running stage" not in run(project, "dvc", "repro", timeout=600).stdout


def _image_sizes(folder: Path) -> dict[str, tuple[int, int]]:
    """The images under ``folder`` (relative path -> (width, height))."""
    from PIL import Image

    sizes = {}
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            sizes[str(path.relative_to(folder))] = image.size
    return sizes
