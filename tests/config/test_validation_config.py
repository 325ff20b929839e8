"""Bad validation settings are refused by the parameter check, before the first node (issue 20)."""

from __future__ import annotations

import pytest

from magicapture_pipeline.config.sections import check_sections
from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig


@pytest.mark.parametrize(
    "section,validation,needle",
    [
        ("stage_one", {"every_n_steps": -1}, "every_n_steps"),
        ("stage_two", {"every_n_steps": 5000}, "larger than max_steps"),
        ("stage_one", {"every_n_steps": 10, "prompts": ["a photo of a person"]}, "placeholder"),
        ("stage_two", {"export": "newest"}, "export"),
        ("stage_one", {"style_fraction": 1.5}, "style_fraction"),
    ],
)
def test_bad_validation_settings_are_named(section, validation, needle):
    params = {section: {"max_steps": 100, "validation": validation}}
    problems = check_sections(params, [section])
    assert len(problems) == 1, problems
    assert needle in problems[0] and section in problems[0]


def test_good_settings_pass_and_defaults_are_off():
    params = {"stage_two": {"max_steps": 100, "validation": {"every_n_steps": 100}}}
    assert check_sections(params, ["stage_two"]) == []
    assert StageOneConfig().validation.every_n_steps == 0
    assert StageTwoConfig().validation.prompts == [
        "a photo of a {v1} person in the style of {v2}",
        "a photo of a {v1} person",
    ]


def test_a_heldout_objective_without_a_heldout_photo_is_refused():
    stage = {"max_steps": 100, "validation": {"every_n_steps": 50}}
    params = {"stage_two": stage, "preprocess": {"heldout_sources": 0}}
    problems = check_sections(params, ["stage_two"])
    assert len(problems) == 1 and "heldout_sources is 0" in problems[0], problems
    assert "stage_two.validation.objective" in problems[0]
    held = {"stage_two": stage, "preprocess": {"heldout_sources": 1}}
    assert check_sections(held, ["stage_two"]) == []
    other = {"stage_two": {**stage, "validation": {"every_n_steps": 50, "objective": "csim_*"}},
             "preprocess": {"heldout_sources": 0}}  # fmt: skip
    assert check_sections(other, ["stage_two"]) == []
