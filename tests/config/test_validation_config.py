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


@pytest.mark.parametrize(
    "evaluation,objective,needle",
    [
        ({"identity_backend": "arcface"}, "csim_*_heldout", "needs a face recognizer"),
        ({}, "csim_arcface_heldout", "does not score with"),
        ({"arcface_model": "/models/w600k_r50.onnx"}, "csim_dlib", "does not score with"),
    ],
)
def test_an_identity_objective_without_its_recognizer_is_refused(evaluation, objective, needle):
    stage = {"max_steps": 100, "validation": {"every_n_steps": 50, "objective": objective}}
    problems = check_sections({"stage_one": stage, "evaluation": evaluation}, ["stage_one"])
    assert len(problems) == 1 and needle in problems[0], problems
    assert "params:stage_one.validation.objective" in problems[0]


@pytest.mark.parametrize(
    "evaluation,objective",
    [
        ({}, "csim_*_heldout"),  # dlib, offline
        ({}, "csim_dlib_heldout"),
        ({"arcface_model": "/models/w600k_r50.onnx"}, "csim_arcface_heldout"),
        ({"identity_backend": "arcface"}, "style_similarity"),  # not an identity metric
    ],
)
def test_an_objective_this_env_computes_passes(evaluation, objective):
    stage = {"max_steps": 100, "validation": {"every_n_steps": 50, "objective": objective}}
    assert check_sections({"stage_two": stage, "evaluation": evaluation}, ["stage_two"]) == []


@pytest.mark.parametrize("photos,refused", [(4, True), (5, False)])
def test_a_heldout_objective_with_too_few_source_photos_is_refused(tmp_path, photos, refused):
    from magicapture_pipeline.config.sections import check_run

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(photos):
        (folder / f"{index}.jpg").write_bytes(b"x")
    (folder / "notes.txt").write_text("not a photo")
    stage = {"max_steps": 100, "validation": {"every_n_steps": 50}}
    params = {"stage_two": stage, "source_dir": str(folder)}
    problems = [p for p in check_run(params, ["stage_two"], tmp_path) if "held-out" in p]
    assert bool(problems) is refused, problems
    if refused:
        assert "holds 4 photo(s)" in problems[0] and "heldout_min_sources is 5" in problems[0]
        assert problems[0].startswith("params:stage_two.validation.objective")
    off = {"stage_two": {"max_steps": 100}, "source_dir": str(folder)}
    assert not [p for p in check_run(off, ["stage_two"], tmp_path) if "held-out" in p]
