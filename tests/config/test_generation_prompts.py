"""The evaluation prompt is one the concept trained on (issue 18 §4).

Generation's default prompts are scored by evaluate; a prompt phrased differently from every
composed training template ("in the {v2} style" where training saw "in the style of {v2}")
measures the concept on text it never learned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.config.loader import LayeredConfigLoader
from magicapture_pipeline.config.sections import effective_section
from magicapture_pipeline.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[2] / "conf"
# "local" is empty here: it reads base alone.
ENVS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "base")


def _params(env: str, runtime: dict) -> dict:
    loader = LayeredConfigLoader(
        conf_source=str(CONF), env=env, runtime_params=runtime, **CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


@pytest.mark.parametrize("recipe", ["paper", "official"])
@pytest.mark.parametrize("env", ENVS)
def test_every_default_generation_prompt_is_a_trained_composed_template(env, recipe):
    params = _params(env, {"stage_two": {"recipe": recipe}})
    generation = GenerationConfig.model_validate(
        effective_section("generation", params["generation"])
    )
    stage_two = effective_section("stage_two", params["stage_two"])
    assert stage_two["recipe"] == recipe
    trained = set(stage_two["composed_templates"])
    prompts = [*generation.prompt_templates, *generation.extra_prompts]
    assert prompts, env
    untrained = [p for p in prompts if p not in trained]
    assert not untrained, f"{env}/{recipe}: {untrained} not among {sorted(trained)}"


def test_the_model_default_prompt_is_trained_too():
    from magicapture_pipeline.config.training import StageTwoConfig

    trained = set(StageTwoConfig().composed_templates)
    assert GenerationConfig().prompt_templates[0] in trained
    assert GenerationConfig().prompt_templates[0] == "a photo of a {v1} person in the style of {v2}"


@pytest.mark.parametrize("env", ["local", "sdxl", "official"])
def test_real_envs_sample_enough_images_for_a_csim_standard_error_of_002(env):
    """Issue 18 §4: SE of mean CSIM = spread / sqrt(n) <= 0.02 per prompt at the assumed
    per-image spread (0.16, ours: the paper prints none); the demo envs are CPU-sized."""
    from magicapture_pipeline.config.generation import CSIM_SE_TARGET, CSIM_SPREAD_ASSUMED

    params = _params(env, {})
    generation = GenerationConfig.model_validate(
        effective_section("generation", params["generation"])
    )
    n = generation.images_per_prompt
    assert CSIM_SPREAD_ASSUMED / n**0.5 <= CSIM_SE_TARGET + 1e-12, (env, n)
    # the estimate it rests on: 64 draws at that spread give an SE near 0.02
    rng = np.random.default_rng(0)
    ses = [np.std(rng.normal(0.5, CSIM_SPREAD_ASSUMED, n), ddof=1) / n**0.5 for _ in range(200)]
    assert float(np.mean(ses)) <= CSIM_SE_TARGET + 0.001
