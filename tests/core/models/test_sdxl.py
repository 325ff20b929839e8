"""SDXL as a base-model family: files say the family, the tiny SDXL loads through from_pretrained,
prompts are encoded as the SDXL pipeline encodes them, placeholder rows train in both tables and
nothing else, LoRA presets on SDXL's architecture, and the SDXL export loads in stock diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.core.generation import sampling as g
from magicapture_pipeline.core.generation.export import LORA_FILE, load_concept, read_concept
from magicapture_pipeline.core.models import sdxl
from magicapture_pipeline.core.models.builders import build_tiny_model, build_tiny_sd
from magicapture_pipeline.core.models.families import FamilyAdapter
from magicapture_pipeline.core.models.loading import SD15, SDXL, load_components, model_family
from magicapture_pipeline.core.training import lora_targets
from tiny_sdxl import TINY_SDXL, TOKENS, assert_stock_load_matches, write_sdxl_concept

PROMPT = "a photo of a <v1> person in the <v2> style"


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("xl") / "tiny_sdxl", TINY_SDXL)


@pytest.fixture(scope="module")
def xl_concept(tiny_xl, tmp_path_factory):
    out = tmp_path_factory.mktemp("xl_concept") / "concept"
    info, parts = write_sdxl_concept(tiny_xl, out)
    return out, info, parts


# --------------------------------------------------------------------------- family and loading


def test_family_comes_from_model_index(tiny_xl, tmp_path):
    sd = build_tiny_sd(tmp_path / "sd", TinyModelConfig(sample_size=32))
    assert model_family(sd) == SD15 and model_family(tiny_xl) == SDXL
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match=r"model_index.json: _class_name 'FluxPipeline'"):
        model_family(other)
    with pytest.raises(ValueError, match="a folder without model_index.json"):
        model_family(tmp_path)


def test_tiny_sdxl_loads_through_from_pretrained(tiny_xl):
    parts = load_components(tiny_xl)
    assert parts.family == SDXL
    assert type(parts.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert parts.tokenizer_2.pad_token == "!" and parts.tokenizer.pad_token == "<|endoftext|>"
    assert parts.unet.config.addition_embed_type == "text_time"
    widths = parts.text_encoder.config.hidden_size, parts.text_encoder_2.config.hidden_size
    assert widths == (32, 64) and parts.unet.config.cross_attention_dim == sum(widths)
    assert parts.vae.config.force_upcast and parts.vae.config.scaling_factor == 0.13025
    assert [name for name, _, _ in parts.text_pairs()] == ["clip_l", "clip_g"]
    assert not any(p.requires_grad for p in parts.text_encoder_2.parameters())


def test_tiny_sdxl_is_seeded(tiny_xl, tmp_path):
    again = load_components(build_tiny_model(tmp_path / "again", TINY_SDXL))
    first = load_components(tiny_xl)
    for a, b in zip(first.unet.parameters(), again.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        first.text_encoder_2.parameters(), again.text_encoder_2.parameters(), strict=True
    ):
        assert torch.equal(a, b)


def test_sd_builder_refuses_an_sdxl_config(tmp_path):
    with pytest.raises(ValueError, match="SD 1.x, not sdxl"):
        build_tiny_sd(tmp_path / "x", TINY_SDXL)


# --------------------------------------------------------------------------- conditioning


def test_prompt_encoding_and_time_ids_match_the_sdxl_pipeline(tiny_xl):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_xl, local_files_only=True)
    expected, _, expected_pooled, _ = pipe.encode_prompt(
        "a photo of a person", device="cpu", do_classifier_free_guidance=False
    )
    adapter = FamilyAdapter(load_components(tiny_xl))
    cond = adapter.encode(["a photo of a person"], "cpu")
    assert cond.hidden.shape == (1, 77, 96) and cond.pooled.shape == (1, 64)
    assert torch.equal(cond.hidden, expected) and torch.equal(cond.pooled, expected_pooled)
    ids = pipe._get_add_time_ids(
        (48, 64), (0, 0), (48, 64), dtype=torch.float32, text_encoder_projection_dim=64
    )
    latents = torch.zeros(1, 4, 6, 8)  # 48 x 64 px
    added = adapter.unet_kwargs(latents, cond)["added_cond_kwargs"]
    assert torch.equal(added["time_ids"], ids) and torch.equal(added["text_embeds"], cond.pooled)
    assert sdxl.time_ids(1024, 1024).tolist() == [[1024, 1024, 0, 0, 1024, 1024]]


def test_sd15_adapter_is_the_plain_text_encoder(tmp_path):
    parts = load_components(build_tiny_sd(tmp_path / "sd", TinyModelConfig(sample_size=32)))
    adapter = FamilyAdapter(parts)
    cond = adapter.encode(["a photo"], "cpu")
    assert cond.pooled is None and adapter.unet_kwargs(torch.zeros(1, 4, 4, 4), cond) == {}
    assert torch.equal(cond.hidden, parts.text_encoder(cond.ids)[0])


def test_placeholder_rows_train_in_both_tables_and_nothing_else(tiny_xl):
    parts = load_components(tiny_xl)
    adapter = FamilyAdapter(parts)
    ids = adapter.add_placeholder_tokens(TOKENS, ["person", "painting"])
    # the two tables start from their own 'person' rows (32-d and 64-d)
    person = {n: t("person", add_special_tokens=False).input_ids[0] for n, t, _ in adapter.tables}
    for name, _, encoder in adapter.tables:
        weight = encoder.get_input_embeddings().weight
        assert torch.equal(weight[ids[name][0]], weight[person[name]])
    before = [e.get_input_embeddings().weight.detach().clone() for e in adapter.text_encoders]
    rows = adapter.placeholder_rows(TOKENS)
    optimizer = torch.optim.AdamW([r.rows for r in rows], lr=1e-2, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    target = torch.randn(1, 4, 8, 8, generator=generator)
    for _ in range(3):
        cond = adapter.encode([PROMPT], "cpu")
        pred = adapter.predict(parts.unet, latents, torch.tensor([500]), cond)
        loss = torch.nn.functional.mse_loss(pred, target)
        optimizer.zero_grad()
        loss.backward()
        for row in rows:  # both tokens, both tables: the gradient reaches every placeholder row
            assert row.rows.grad is not None and bool((row.rows.grad.abs().sum(1) > 0).all())
        optimizer.step()
        for row in rows:
            row.sync()
    for (name, _, encoder), old in zip(adapter.tables, before, strict=True):
        new = encoder.get_input_embeddings().weight.detach()
        moved = (new != old).any(dim=1).nonzero().flatten().tolist()
        assert moved == sorted(ids[name]), name
    embeddings = adapter.get_embeddings(TOKENS)
    assert tuple(embeddings["<v1>"]["clip_l"].shape) == (32,)
    assert tuple(embeddings["<v1>"]["clip_g"].shape) == (64,)
    for row in rows:
        row.detach()


def test_embeddings_of_the_wrong_family_are_refused(tiny_xl):
    adapter = FamilyAdapter(load_components(tiny_xl))
    adapter.add_placeholder_tokens(TOKENS, ["person", "painting"])
    with pytest.raises(ValueError, match="'<v1>' is one row, but the base model is sdxl"):
        adapter.set_embeddings({"<v1>": torch.zeros(32), "<v2>": torch.zeros(32)})


# --------------------------------------------------------------------------- LoRA presets


def _count(model: torch.nn.Module, targets) -> int:
    """Modules peft's matching would pick: a regex string is full-matched against the module name;
    a list matches name suffixes. Only Linear layers count (those are what the presets aim at)."""
    import re

    found = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if isinstance(targets, str):
            found += re.fullmatch(targets, name) is not None
        else:
            found += any(name == t or name.endswith(f".{t}") for t in targets)
    return found


def _meta_models():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from magicapture_pipeline.core.models.random_weights import SD15_UNET

    with init_empty_weights():
        return {
            "sd15": UNet2DConditionModel(**SD15_UNET),
            "sdxl": UNet2DConditionModel(**sdxl.SDXL_UNET),
            "clip_l": CLIPTextModel(CLIPTextConfig(**sdxl.SDXL_TEXT)),
            "clip_g": CLIPTextModelWithProjection(CLIPTextConfig(**sdxl.SDXL_TEXT_2)),
        }


def _transformer_blocks(model: torch.nn.Module) -> int:
    """How many ``...transformer_blocks.<i>`` (BasicTransformerBlock) a UNet has."""
    return sum(
        1
        for name, _ in model.named_modules()
        if name.split(".")[-2:-1] == ["transformer_blocks"] and name.split(".")[-1].isdigit()
    )


def test_lora_presets_on_the_sdxl_architecture():
    """SDXL base has 70 transformer blocks (down 2 + 20, mid 10, up 30 + 6... : 70), SD 1.5 has
    16; every preset aims at per-block attention / feed-forward layers, so it scales by 70 / 16."""
    models = _meta_models()
    assert _transformer_blocks(models["sd15"]) == 16 and _transformer_blocks(models["sdxl"]) == 70
    assert models["sdxl"].config.cross_attention_dim == 2048
    assert _count(models["sdxl"], lora_targets("paper")[0]) == 280  # 70 x attn2 q/k/v/out
    assert _count(models["sd15"], lora_targets("paper")[0]) == 64
    for preset in ("official", "custom_diffusion"):
        unet_targets, _ = lora_targets(preset)
        sd15, xl = _count(models["sd15"], unet_targets), _count(models["sdxl"], unet_targets)
        assert sd15 > 0 and xl * 16 == sd15 * 70, preset
    _, text_targets = lora_targets("official")
    assert _count(models["clip_l"], text_targets) == 12 * 4
    assert _count(models["clip_g"], text_targets) == 32 * 4  # not the text projection


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_peft_picks_what_the_preset_counts_on_tiny_sdxl(tiny_xl, preset):
    from peft import LoraConfig

    from magicapture_pipeline.core.training import lora_module_names

    parts = load_components(tiny_xl)
    unet_targets, _ = lora_targets(preset)
    expected = _count(parts.unet, unet_targets)
    parts.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=unet_targets))
    assert len(lora_module_names(parts.unet)) == expected > 0


# --------------------------------------------------------------------------- export


def test_sdxl_export_layout(xl_concept):
    from safetensors.torch import load_file

    folder, info, _ = xl_concept
    assert info["family"] == "sdxl" and read_concept(folder) == info
    assert info["text_encoder_lora"] and info["text_encoder_2_lora"] and info["lora"] == LORA_FILE
    for item in info["tokens"]:
        state = load_file(str(folder / item["file"]))
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            "clip_l": (1, 32),
            "clip_g": (1, 64),
        }
    keys = load_file(str(folder / LORA_FILE)).keys()
    prefixes = {key.split(".")[0] for key in keys}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}


def _stock_image(base, folder, scales, seed=7):
    """The recipe the README shows, with nothing from this project."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTextModelWithProjection

    meta = json.loads((folder / "concept.json").read_text())
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        base, subfolder="text_encoder_2", local_files_only=True,
        eos_token_id=meta["text_pooling"]["clip_g"]["eos_token_id"],
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline.from_pretrained(
        base, local_files_only=True, text_encoder_2=text_encoder_2
    )
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    for t in meta["tokens"]:
        state = load_file(str(folder / t["file"]))
        pipe.load_textual_inversion(
            state["clip_l"], token=t["token"], text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
        )  # fmt: skip
        pipe.load_textual_inversion(
            state["clip_g"], token=t["token"], text_encoder=pipe.text_encoder_2,
            tokenizer=pipe.tokenizer_2,
        )  # fmt: skip
    pipe.load_lora_weights(str(folder), adapter_name="concept")
    pipe.set_adapters(
        "concept", {"unet": scales[0], "text_encoder": scales[1], "text_encoder_2": scales[1]}
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        PROMPT,
        num_inference_steps=3,
        guidance_scale=7.0,
        height=64,
        width=64,
        generator=torch.Generator(device="cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image)


def test_stock_sdxl_recipe_reproduces_the_projects_image(tiny_xl, xl_concept):
    folder, _, _ = xl_concept
    config = GenerationConfig(
        prompt_templates=["a photo of a {v1} person in the {v2} style"],
        images_per_prompt=1,
        num_inference_steps=3,
        guidance_scale=7.0,
        resolution=64,
        seed=7,
    )
    run = g.run_generation(tiny_xl, folder, config)
    ours = np.asarray(run.images[0].image)
    assert run.images[0].prompt == PROMPT
    stock = _stock_image(tiny_xl, folder, (config.lora_scale_unet, config.lora_scale_text_encoder))
    np.testing.assert_array_equal(ours, stock)
    other = _stock_image(tiny_xl, folder, (0.0, 0.0))
    assert np.abs(other.astype(int) - stock.astype(int)).max() > 0  # the LoRA shows


def test_stock_load_gives_the_in_memory_image(tiny_xl, xl_concept):
    """The exported files reproduce the in-memory concept (adapters attached, rows written)."""
    folder, _, parts = xl_concept
    assert_stock_load_matches(
        tiny_xl, folder, PROMPT, unet=parts.unet, text_encoder=parts.text_encoder,
        text_encoder_2=parts.text_encoder_2, tokenizer=parts.tokenizer,
        tokenizer_2=parts.tokenizer_2,
    )  # fmt: skip


def test_family_mismatch_is_refused(xl_concept, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder, _, _ = xl_concept
    sd = build_tiny_sd(tmp_path / "sd", TinyModelConfig(sample_size=32))
    pipe = StableDiffusionPipeline.from_pretrained(sd, local_files_only=True)
    with pytest.raises(ValueError, match=r"concept.json: family 'sdxl', but the pipeline"):
        load_concept(pipe, folder)


def test_registered_pyfunc_serves_an_sdxl_concept(tiny_xl, xl_concept):
    """The registry's pyfunc loads the base model by family and the SDXL concept's both tables."""
    from types import SimpleNamespace

    import pandas as pd

    from magicapture_pipeline.config.generation import SamplingConfig
    from magicapture_pipeline.serving.concept_model import (
        CONCEPT_ARTIFACT,
        ConceptModel,
        decode_image,
    )

    folder, _, _ = xl_concept
    model = ConceptModel()
    sampling = SamplingConfig(num_inference_steps=2, resolution=64).model_dump()
    model.load_context(
        SimpleNamespace(
            artifacts={CONCEPT_ARTIFACT: str(folder)},
            model_config={
                "base_model": str(tiny_xl),
                "base_model_kind": "local_path",
                "sampling": sampling,
            },
        )
    )
    assert type(model._pipe).__name__ == "StableDiffusionXLPipeline"
    assert "<v1>" in model._pipe.tokenizer_2.get_vocab()
    out = model.predict(None, pd.DataFrame({"prompt": ["a photo of a [V1] person"], "seed": [1]}))
    assert out.loc[0, "prompt"] == "a photo of a <v1> person"
    assert decode_image(out.loc[0, "image"]).size == (64, 64)


def test_sd15_attention_resolution_on_sdxl_names_the_sdxl_setting(tiny_xl):
    """base's 16 on an SDXL model: the error says which resolution SDXL needs."""
    from magicapture_pipeline.core.models.attention import cross_attention_layers

    unet = load_components(tiny_xl).unet  # 64 px: cross-attention at 4 only
    with pytest.raises(ValueError, match=r"available: \[4\].*SDXL at 1024 px 32"):
        cross_attention_layers(unet, 16)
