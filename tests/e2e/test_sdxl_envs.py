"""The ``sdxl`` and ``demo-sdxl`` Kedro envs: what they change, that they pass the parameter
check, and (slow) the whole ``customize`` chain on the tiny random SDXL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT, run_kedro

CONF = PROJECT_ROOT / "conf"
# What demo-sdxl may change relative to demo (every other key of every file is the same).
DEMO_SDXL_CHANGES = {
    "globals.yml": {"concept_name"},
    "parameters_model.yml": {"model"},
}


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def test_demo_sdxl_mirrors_demo_file_by_file():
    demo = sorted(p.name for p in (CONF / "demo").glob("*.yml"))
    assert sorted(p.name for p in (CONF / "demo-sdxl").glob("*.yml")) == demo
    for name in demo:
        ours, theirs = _yaml(CONF / "demo-sdxl" / name), _yaml(CONF / "demo" / name)
        allowed = DEMO_SDXL_CHANGES.get(name, set())
        for key in set(ours) | set(theirs):
            if key not in allowed:
                assert ours.get(key) == theirs.get(key), f"conf/demo-sdxl/{name}: {key} drifted"
    model = _yaml(CONF / "demo-sdxl" / "parameters_model.yml")["model"]
    assert model["tiny"]["family"] == "sdxl" and model["pretrained"] != "data/06_models/tiny_sd"


def _params(env: str) -> dict:
    from kedro.config import OmegaConfigLoader

    from magicapture_pipeline.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(CONF), env=env, **CONFIG_LOADER_ARGS)
    return loader["parameters"]


def test_sdxl_env_is_base_at_1024_px_on_sdxl_base():
    base, sdxl = _params("base"), _params("sdxl")
    assert sdxl["model"]["pretrained"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert sdxl["preprocess"]["resolution"] == sdxl["generation"]["resolution"] == 1024
    assert sdxl["stage_two"]["attention"]["resolution"] == 32
    # deep-merged: everything the sdxl env does not name stays the paper's
    assert sdxl["stage_two"]["max_steps"] == base["stage_two"]["max_steps"]
    assert sdxl["stage_two"]["lora"] == base["stage_two"]["lora"]
    assert sdxl["validation"]["min_face_score"] == base["validation"]["min_face_score"]


@pytest.mark.parametrize("env", ["sdxl", "demo-sdxl"])
def test_sdxl_envs_pass_the_parameter_check(env):
    done = subprocess.run(
        [sys.executable, "-m", "magicapture_pipeline.check_config", f"--env={env}",
         "--pipelines=customize"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_demo_sdxl_customize_runs_end_to_end(project_copy):
    done = run_kedro(project_copy, "run", "--pipelines=customize", "--env=demo-sdxl", timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    base = json.loads((project_copy / "data/06_models/demo-sdxl/base_model.json").read_text())
    assert base["family"] == "sdxl" and base["built"] is True
    concept_dir = project_copy / "data/06_models/demo-sdxl/concept"
    concept = json.loads((concept_dir / "concept.json").read_text())
    assert concept["family"] == "sdxl" and concept["attention_refocusing"]["layers"]
    assert (project_copy / "data/08_reporting/demo-sdxl/metrics.json").is_file()
