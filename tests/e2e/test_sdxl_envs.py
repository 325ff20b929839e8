"""The ``sdxl`` and ``demo-sdxl`` Kedro envs: what they change, that they pass the parameter
check, and (slow) the whole ``customize`` chain on the tiny random SDXL."""

from __future__ import annotations

import json

import pytest

from conftest import PROJECT_ROOT, run_kedro_here
from e2e.demo_fingerprint import NO_UPSCALE, SHRINK

CONF = PROJECT_ROOT / "conf"


def test_demo_sdxl_extends_demo():
    """demo-sdxl is demo plus its own model and concept (config.loader.ENV_PARENTS), not a copy."""
    from magicapture_pipeline.config.loader import ENV_PARENTS

    assert ENV_PARENTS["demo-sdxl"] == "demo"
    model = _params("demo-sdxl")["model"]
    assert model["tiny"]["family"] == "sdxl" and model["pretrained"] != "data/06_models/tiny_sd"
    assert (
        _params("demo-sdxl")["stage_two"]["max_steps"] == _params("demo")["stage_two"]["max_steps"]
    )


def _params(env: str) -> dict:
    from magicapture_pipeline.config.sections import effective_parameters
    from magicapture_pipeline.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    loader = CONFIG_LOADER_CLASS(str(CONF), env=env, **CONFIG_LOADER_ARGS)
    return effective_parameters(loader["parameters"])


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
    """What ``check_config --env=<env> --pipelines=customize`` checks, in this process (the command
    itself runs in ``tests/config/test_parameter_check.py``, which checks every shipped env):
    a new interpreter cost ~6 CPU s of start-up for a check of well under one."""
    from magicapture_pipeline.config.sections import check_run, sections_read_by
    from magicapture_pipeline.pipeline_registry import register_pipelines
    from magicapture_pipeline.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    loader = CONFIG_LOADER_CLASS(str(CONF), env=env, **CONFIG_LOADER_ARGS)
    sections = sections_read_by(register_pipelines()["customize"].inputs())
    assert "stage_two" in sections and "generation" in sections
    assert check_run(loader["parameters"], sections, PROJECT_ROOT) == []


@pytest.mark.integration
@pytest.mark.slow
def test_demo_sdxl_customize_runs_end_to_end(project_copy):
    # Every node of the chain on the tiny SDXL, each stage shrunk to the golden test's few steps
    # (checkpoints, heatmaps and a validation still fall inside them): what is under test is that
    # the demo-sdxl env runs the SDXL family end to end, not the demo's 60 + 80 training steps, nor
    # Real-ESRGAN (the same for every family, ~10 CPU s; the shared demo_run upscales).
    # Kedro's command line in this process (``run_kedro_here``); ``demo_run`` runs the same
    # chain (demo env) as a real ``kedro`` process
    done = run_kedro_here(
        project_copy, "run", "--pipelines=customize", "--env=demo-sdxl",
        f"--params={SHRINK},{NO_UPSCALE}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    base = json.loads((project_copy / "data/06_models/demo-sdxl/base_model.json").read_text())
    assert base["family"] == "sdxl" and base["built"] is True
    concept_dir = project_copy / "data/06_models/demo-sdxl/concept"
    concept = json.loads((concept_dir / "concept.json").read_text())
    assert concept["family"] == "sdxl" and concept["attention_refocusing"]["layers"]
    assert (project_copy / "data/08_reporting/demo-sdxl/metrics.json").is_file()
