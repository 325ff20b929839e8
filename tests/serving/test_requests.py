"""Request validation of the served concept: each limit refused with a message naming it."""

from __future__ import annotations

import pandas as pd
import pytest

from magicapture_pipeline.config.generation import SamplingConfig
from magicapture_pipeline.config.serving import MAX_SEED, ServingLimits
from magicapture_pipeline.serving.base_model import (
    BaseModelMissing,
    portable_reference,
    resolve_base_model,
)
from magicapture_pipeline.serving.requests import RequestRefused, validate_request

SAMPLING = SamplingConfig(num_inference_steps=50, guidance_scale=7.0, seed=100)


def check(rows, limits: ServingLimits | None = None):
    return validate_request(
        pd.DataFrame(rows),
        limits or ServingLimits(),
        SAMPLING,
        fill_tokens=lambda p: p.replace("[V1]", "<v1>"),
        count_tokens=lambda p: len(p.split()) + 2,  # words + start/end tokens
        token_limit=77,
    )


def test_defaults_come_from_the_sampling_settings():
    requests = check([{"prompt": "a [V1]"}, {"prompt": "b", "steps": 3, "seed": 7}])
    assert [(r.prompt, r.seed, r.steps, r.guidance_scale) for r in requests] == [
        ("a <v1>", 100, 50, 7.0),
        ("b", 7, 3, 7.0),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": ""}, "row 0: 'prompt' is missing or empty"),
        ({"prompt": None}, "row 0: 'prompt' is missing or empty"),
        ({"prompt": "w " * 76}, "row 0: 'prompt' is 78 tokens; the limit is 77"),
        ({"prompt": "x", "steps": 0}, "'steps' is 0; it must be an integer in [1, 150]"),
        ({"prompt": "x", "steps": -5}, "'steps' is -5; it must be an integer in [1, 150]"),
        ({"prompt": "x", "steps": 151}, "'steps' is 151; it must be an integer in [1, 150]"),
        ({"prompt": "x", "steps": 2.5}, "'steps' is 2.5; it must be an integer"),
        ({"prompt": "x", "guidance_scale": 30.5}, "'guidance_scale' is 30.5; it must be a number"),
        ({"prompt": "x", "guidance_scale": -1.0}, "'guidance_scale' is -1; it must be a number"),
        ({"prompt": "x", "guidance_scale": float("inf")}, "'guidance_scale' is inf"),
        ({"prompt": "x", "seed": -1}, f"'seed' is -1; it must be an integer in [0, {MAX_SEED}]"),
        ({"prompt": "x", "width": 4096}, "unknown column(s) ['width']"),
    ],
)
def test_each_limit_is_refused_with_its_rule(row, message):
    with pytest.raises(RequestRefused) as caught:
        check([row])
    assert message in str(caught.value.message)
    assert caught.value.get_http_status_code() == 400


def test_limits_are_configurable_and_every_problem_is_listed():
    limits = ServingLimits(max_rows=2, max_steps=20, max_guidance=10.0, max_prompt_tokens=5)
    with pytest.raises(RequestRefused, match=r"3 rows in one request; at most 2"):
        check([{"prompt": "x"}] * 3, limits)
    with pytest.raises(RequestRefused) as caught:
        check([{"prompt": "a b c d", "steps": 21}, {"prompt": "x", "guidance_scale": 11.0}], limits)
    assert caught.value.problems == [
        "row 0: 'prompt' is 6 tokens; the limit is 5 (the text encoder's, start/end tokens "
        "included); shorten it, nothing is cut",
        "row 0: 'steps' is 21; it must be an integer in [1, 20]",
        "row 1: 'guidance_scale' is 11; it must be a number in [0.0, 10.0]",
    ]
    with pytest.raises(RequestRefused, match="no rows"):
        check([])
    with pytest.raises(ValueError, match="min_steps 5 > max_steps 4"):
        ServingLimits(min_steps=5, max_steps=4)


def test_base_model_reference_is_portable(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data" / "sd").mkdir(parents=True)
    outside = tmp_path / "elsewhere_sd"
    outside.mkdir()
    assert portable_reference(project / "data" / "sd", project) == ("data/sd", "project_path")
    assert portable_reference("data/sd", project) == ("data/sd", "project_path")
    assert portable_reference(outside, project) == (str(outside), "local_path")
    assert portable_reference("org/model", project) == ("org/model", "hub_id")
    assert resolve_base_model("data/sd", "project_path", [project]) == str(project / "data" / "sd")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAGICAPTURE_PROJECT_ROOT", raising=False)
    missing = "project folder 'data/sd'.*MAGICAPTURE_PROJECT_ROOT"
    with pytest.raises(BaseModelMissing, match=missing):
        resolve_base_model("data/sd", "project_path")
    monkeypatch.setenv("MAGICAPTURE_PROJECT_ROOT", str(project))
    assert resolve_base_model("data/sd", "project_path") == str(project / "data" / "sd")
    with pytest.raises(BaseModelMissing, match="of the machine that trained it"):
        resolve_base_model(str(tmp_path / "gone"), "local_path")
    assert resolve_base_model("org/model", "hub_id") == "org/model"
