"""One home per default (issue 17 §1): the typed field is the only default, the authors' recipe is
derived from the fields, conf/base sets only user-facing knobs, envs layer, and `recipe: official`
works in every env with an explicit value winning."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from magicapture_pipeline.check_config import knob_sources
from magicapture_pipeline.config.loader import LayeredConfigLoader
from magicapture_pipeline.config.merge import deep_merge
from magicapture_pipeline.config.recipes import official_recipe
from magicapture_pipeline.config.sections import SECTIONS, effective_section
from magicapture_pipeline.config.training import (
    COMPOSED_TEMPLATES,
    REFERENCE_TEMPLATES,
    SOURCE_TEMPLATES,
    StageOneConfig,
    StageTwoConfig,
)
from magicapture_pipeline.settings import CONFIG_LOADER_ARGS

PROJECT = Path(__file__).resolve().parents[2]
CONF = PROJECT / "conf"
# conf/base keys that may repeat their pydantic default: what a user must set or commonly changes.
USER_FACING = {
    "model.pretrained",
    "evaluation.arcface_model",
    "evaluation.aesthetic_model",
    "evaluation.device",
    "generation.prompt_templates",
    "generation.extra_prompts",
    "generation.images_per_prompt",
    "generation.device",
    "postprocess.face_restoration.checkpoint",
    "validation.min_image_side",
    "tracking.tracking_uri",
    "stage_one.recipe",
    "stage_one.resume",
    "stage_one.device",
    "stage_two.recipe",
    "stage_two.resume",
    "stage_two.device",
    "stage_two.identity.checkpoint",
}

# The authors' recipe as the OFFICIAL tables of config/training.py held it before issue 17.
AUTHORS_STAGE_ONE = {
    "source_templates": SOURCE_TEMPLATES,
    "reference_templates": REFERENCE_TEMPLATES,
    "tokens": {"person_init": "person", "style_init": "random", "random_std": 0.017},
    "learning_rate": 2e-3,
    "max_steps": 1200,
    "gradient_accumulation_steps": 1,
    "lr_scheduler": "linear",
    "lr_warmup_steps": 0,
    "adam_weight_decay": 0.0,
    "mixed_precision": "no",
    "mask_floor": 0.01,
    "max_timestep_fraction": 1.0,
    "style_weight": 2.0,
    "style_weight_until": 0.5,
    "color_jitter": [0.1, 0.1],
    "embedding_norm_target": 0.4,
    "max_grad_norm": None,  # the authors clip in phase 2 only (issue 18 §1)
    # train_magicapture.sh --gradient_checkpointing: train() enables it before both phases
    # magicapture_train.py: fp32 weights (from_pretrained, no torch_dtype) under autocast
    "memory": {"frozen_weights_16bit": False, "unet_gradient_checkpointing": True},
}
AUTHORS_STAGE_TWO = {
    "source_templates": SOURCE_TEMPLATES,
    "reference_templates": REFERENCE_TEMPLATES,
    "composed_templates": COMPOSED_TEMPLATES,
    "tokens": {"person_init": "person", "style_init": "random", "random_std": 0.017},
    "lora": {
        "rank": 4,
        "alpha": 4.0,
        "preset": "official",
        "text_encoder_learning_rate": 4e-5,
        "init": "gaussian",  # LoraInjectedLinear: N(0, (1/r)^2) down, zero up (issue 18 §1)
    },
    "learning_rate": 4e-4,
    "embedding_learning_rate": 1e-4,
    "max_steps": 1500,
    "gradient_accumulation_steps": 1,
    "lr_scheduler": "linear",
    "lr_warmup_steps": 0,
    "adam_weight_decay": 1e-3,
    "max_grad_norm": 1.0,
    "mixed_precision": "fp16",
    # magicapture_train.py: fp32 weights (from_pretrained, no torch_dtype) under autocast
    "memory": {"frozen_weights_16bit": False, "unet_gradient_checkpointing": True},
    "mask_floor": 0.01,
    "max_timestep_fraction": 0.8,
    "style_weight": 2.0,
    "style_weight_until": 0.5,
    "color_jitter": [0.1, 0.1],
    "identity": {
        "mode": "two_pass",
        "weight": 0.25,
        "threshold_fraction": 0.8,
        "tasks": ["source", "composed"],
        "decode_region": "full",
        "decoder": "vae",
        "autocast_dtype": "fp32",
    },
    "attention": {"enabled": True, "weight": 2.5, "scale_order": "scale_then_average"},
}


def params(env: str, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    loader = LayeredConfigLoader(
        conf_source=str(CONF), env=env, runtime_params=runtime or {}, **CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def effective(env: str, section: str, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    return effective_section(section, params(env, runtime)[section])


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


# ------------------------------------------------------------------ the recipe lives once
@pytest.mark.parametrize(
    ("model", "recipe"),
    [(StageOneConfig, AUTHORS_STAGE_ONE), (StageTwoConfig, AUTHORS_STAGE_TWO)],
    ids=["stage_one", "stage_two"],
)
def test_the_official_recipe_is_derived_from_the_fields(model, recipe):
    assert official_recipe(model) == recipe
    assert not hasattr(model, "OFFICIAL"), "the recipe must live once: on the fields"


def test_the_official_env_only_switches_the_recipe():
    for stage in ("stage_one", "stage_two"):
        data = yaml.safe_load((CONF / "official" / f"parameters_train_{stage}.yml").read_text())
        assert data == {stage: {"recipe": "official"}}


@pytest.mark.parametrize("stage", ["stage_one", "stage_two"])
def test_recipe_official_on_sdxl_changes_the_effective_knobs(stage):
    paper = effective("sdxl", stage)
    official = effective("sdxl", stage, {stage: {"recipe": "official"}})
    expected = _leaves(official_recipe(SECTIONS[stage]))
    got = _leaves(official)
    assert {key: got[key] for key in expected} == expected
    assert official["lr_scheduler"] == "linear" != paper["lr_scheduler"]
    if stage == "stage_two":
        assert official["attention"]["resolution"] == 32  # the sdxl env's own value stays
        assert official["lora"]["preset"] == "official"


def test_the_official_env_and_the_runtime_recipe_agree():
    runtime = {"stage_one": {"recipe": "official"}, "stage_two": {"recipe": "official"}}
    for stage in ("stage_one", "stage_two"):
        assert effective("official", stage) == effective("local", stage, runtime)


def test_an_explicit_value_wins_over_the_recipe():
    runtime = {"stage_two": {"recipe": "official", "lr_scheduler": "cosine", "lora": {"rank": 8}}}
    config = effective("demo", "stage_two", runtime)
    assert config["lr_scheduler"] == "cosine"  # --params
    assert config["lora"] == {**config["lora"], "rank": 8, "preset": "official"}
    assert config["learning_rate"] == 1e-3  # conf/demo sets it: the env's value wins too
    assert config["max_steps"] == 80
    assert config["identity"]["tasks"] == ["source", "composed"]  # nested knobs are filled


# ------------------------------------------------------------------ conf/base
def _base_sections() -> list[tuple[str, str, Any]]:
    rows = []
    for path in sorted((CONF / "base").glob("parameters*.yml")):
        for section, value in (yaml.safe_load(path.read_text()) or {}).items():
            if section in SECTIONS and isinstance(value, dict):
                rows.append((path.name, section, value))
    return rows


def _default_of(model: type[BaseModel], dotted: str) -> Any:
    value: Any = model.model_construct()  # defaults only (required fields stay unset)
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump() if isinstance(value, BaseModel) else value


def test_no_base_key_repeats_its_pydantic_default():
    repeats = []
    for file, section, data in _base_sections():
        # the benchmark's variants are data (rows), not knobs with defaults
        knobs = {k: v for k, v in data.items() if k != "variants"}
        for key, value in _leaves(knobs).items():
            name = f"{section}.{key}"
            if name in USER_FACING or (isinstance(value, str) and "${" in value):
                continue
            try:
                default = _default_of(SECTIONS[section], key)
            except AttributeError:  # a key inside a dict-valued field
                continue
            if default == value:
                repeats.append(f"conf/base/{file}: {name} = {value!r}")
    assert not repeats, "conf/base repeats pydantic defaults:\n" + "\n".join(repeats)


def test_base_sets_no_knob_the_recipe_fills():
    """A base value would count as explicit and silently block `recipe: official`."""
    for stage in ("stage_one", "stage_two"):
        recipe = set(_leaves(official_recipe(SECTIONS[stage])))
        base = yaml.safe_load((CONF / "base" / f"parameters_train_{stage}.yml").read_text())
        assert not recipe & set(_leaves(base[stage])), stage


def test_runs_keep_their_checkpoint_cadence():
    assert StageOneConfig().checkpoint_every == 200
    assert StageTwoConfig().checkpoint_every == 250
    assert effective("local", "stage_one")["checkpoint_every"] == 200
    assert effective("local", "stage_two")["checkpoint_every"] == 250


# ------------------------------------------------------------------ env layering
def test_demo_sdxl_holds_only_what_differs_from_demo():
    files = sorted(p.name for p in (CONF / "demo-sdxl").glob("*.yml"))
    assert files == ["globals.yml", "parameters_model.yml"]
    demo, sdxl = params("demo"), params("demo-sdxl")
    assert sdxl["concept"] == "demo-sdxl" and demo["concept"] == "demo"
    assert sdxl["model"]["tiny"]["family"] == "sdxl"
    assert sdxl["model"]["tiny"]["sample_size"] == 128  # inherited from conf/demo
    for key in set(demo) - {"concept", "model"}:
        if key in SECTIONS:
            strip = {
                "stage_one",
                "stage_two",
                "generation",
                "registry",
                "tracking",
                "serving",
                "benchmark",
            }
            a, b = effective_section(key, demo[key]), effective_section(key, sdxl[key])
            if key in strip:  # paths and names carry the concept
                a, b = (yaml.safe_dump(x).replace("demo-sdxl", "demo") for x in (a, b))
            assert a == b, key


def test_demo_sdxl_catalog_and_globals_come_from_demo():
    loader = LayeredConfigLoader(conf_source=str(CONF), env="demo-sdxl", **CONFIG_LOADER_ARGS)
    assert loader["globals"]["resolution"] == 128
    assert loader["catalog"]["source_images"]["type"].endswith("SampleImageFolderDataset")


# ------------------------------------------------------------------ one merge, one check
def test_one_deep_merge_helper():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    assert deep_merge(base, {"a": {"b": 5}, "d": [2]}) == {"a": {"b": 5, "c": 2}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}
    from magicapture_pipeline.config import sections
    from magicapture_pipeline.core.evaluation import baselines

    for module in (sections, baselines):
        assert "def _deep_merge" not in inspect.getsource(module)
        assert "def _merged" not in inspect.getsource(module)


def test_no_node_parameter_is_typed_as_a_model():
    """Kedro 1.7 validates node parameters typed as pydantic models itself, before any hook;
    the project keeps one check (ParameterCheckHook: every problem at once, field and rule)."""
    from kedro.framework.project import configure_project, pipelines

    configure_project("magicapture_pipeline")
    typed = []
    for name, pipeline in pipelines.items():
        for node in pipeline.nodes:
            hints = getattr(node.func, "__annotations__", {})
            for arg, hint in hints.items():
                if isinstance(hint, str):
                    hint_text = hint
                else:
                    hint_text = getattr(hint, "__name__", str(hint))
                if any(model.__name__ in hint_text for model in SECTIONS.values()):
                    typed.append(f"{name}: {node.name}({arg}: {hint_text})")
    assert not typed, typed


def test_check_config_names_each_source():
    layers = [
        ("conf/base/parameters_train_stage_two.yml", {"stage_two.recipe": "official"}),
        ("conf/demo/parameters_train_stage_two.yml", {"stage_two.max_steps": 80}),
    ]
    parameters = {"stage_two": {"recipe": "official", "max_steps": 80, "lora": {"rank": 8}}}
    runtime = {"stage_two": {"lora": {"rank": 8}}}
    rows = {
        key: (value, source)
        for key, value, source in knob_sources(parameters, ["stage_two"], layers, runtime)
    }
    assert rows["stage_two.lora.rank"] == (8, "--params")
    assert rows["stage_two.max_steps"] == (80, "conf/demo/parameters_train_stage_two.yml")
    assert rows["stage_two.lr_scheduler"] == ("linear", "recipe official (authors' code)")
    assert rows["stage_two.lora.init"] == ("gaussian", "recipe official (authors' code)")
    assert rows["stage_two.heatmap_every"][1].startswith("default")
    # a section declared empty in a file (`export: {}`) sets none of its knobs
    layers.append(("conf/base/parameters_export.yml", {"export": {}}))
    rows = {key: source for key, _, source in knob_sources({"export": {}}, ["export"], layers, {})}
    assert rows["export.format"].startswith("default")
    assert rows["export.alias"].startswith("default")


def test_check_config_prints_each_default_s_recorded_source():
    """A knob left at its default names the provenance its field records (config/recipes.py),
    the same metadata docs/defaults.md is generated from; not the help text."""
    from magicapture_pipeline.config.adapters import LoraConfigModel
    from magicapture_pipeline.config.generation import SuperResolutionConfig
    from magicapture_pipeline.config.recipes import provenance
    from magicapture_pipeline.config.tracking import PromotionGates

    parameters = {"stage_two": {}, "postprocess": {}, "registry": {}}
    rows = {
        key: source
        for key, _, source in knob_sources(
            parameters, ["stage_two", "postprocess", "registry"], [], {}
        )
    }
    learning_rate = provenance(StageTwoConfig.model_fields["learning_rate"])
    assert rows["stage_two.learning_rate"] == f"default, {learning_rate}"
    assert rows["stage_two.learning_rate"].startswith("default, paper: ")
    rank = provenance(LoraConfigModel.model_fields["rank"])
    assert rows["stage_two.lora.rank"] == f"default, authors' code: {rank.cite}"
    tiles = provenance(SuperResolutionConfig.model_fields["tilesize"])
    assert (
        rows["postprocess.super_resolution.tilesize"] == f"default, library default: {tiles.cite}"
    )
    gate = provenance(PromotionGates.model_fields["min_metrics"])
    assert rows["registry.gates.min_metrics.csim_arcface"] == f"default, ours: {gate.cite}"
