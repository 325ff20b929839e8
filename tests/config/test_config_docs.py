"""Every knob in every configuration model documents itself."""

from pathlib import Path

import pytest

from magicapture_pipeline.config.docs import (
    FILES,
    config_models,
    defaults_with_recipe,
    render_markdown,
)

MODELS = list(config_models())


def test_there_are_config_models():
    assert MODELS, "no pydantic models found under magicapture_pipeline.config"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.__module__}.{m.__name__}")
def test_every_field_has_one_line_help(model):
    fields = model.model_fields.items()
    undocumented = [name for name, f in fields if not (f.description or "").strip()]
    assert not undocumented, f"{model.__name__}: fields without a description: {undocumented}"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.__module__}.{m.__name__}")
def test_unknown_keys_are_rejected(model):
    assert model.model_config.get("extra") == "forbid", (
        f"{model.__name__} must forbid unknown keys so a typo in conf/ fails loudly"
    )


def test_reference_renders_every_model():
    text = render_markdown()
    for model in MODELS:
        assert model.__name__ in text


def test_committed_reference_is_up_to_date():
    committed = (Path(__file__).resolve().parents[2] / "docs" / "parameters.md").read_text()
    assert committed == render_markdown(), (
        "docs/parameters.md is stale: run "
        "`python -m magicapture_pipeline.config.docs --write`"
    )


def test_committed_recipe_table_is_up_to_date():
    committed = (Path(__file__).resolve().parents[2] / "docs" / "defaults.md").read_text()
    assert committed == defaults_with_recipe(committed), (
        "docs/defaults.md's authors' recipe is stale: run "
        "`python -m magicapture_pipeline.config.docs --write`"
    )


def test_reference_is_ordered_by_yaml_file_and_key():
    text = render_markdown()
    positions = [text.index(f"## `{name}`") for name in FILES]
    assert positions == sorted(positions)
    base = Path(__file__).resolve().parents[2] / "conf" / "base"
    assert set(FILES) == {p.name for p in base.glob("parameters_*.yml")}
    assert text.index("`stage_two.lora.rank`") < text.index("`stage_two.identity.mode`")
