"""The tiny random models are the published SD 1.5 / SDXL base configs with only the sizes shrunk,
and SDXL's pooled text embedding is the end-of-text token's although [V1]/[V2] are added after it
(issue 18 §3).

The expected values are ``core.models.published`` (copied from the hub folders
``stable-diffusion-v1-5/stable-diffusion-v1-5`` and ``stabilityai/stable-diffusion-xl-base-1.0``,
each component's ``config.json`` / ``scheduler_config.json``); the quirks that matter are also
written out literally below, so a wrong copy in ``published.py`` cannot pass unseen.
"""

from __future__ import annotations

import json

import pytest
import torch

from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.core.generation import sampling
from magicapture_pipeline.core.generation.export import load_concept
from magicapture_pipeline.core.models import published
from magicapture_pipeline.core.models.builders import build_tiny_model, build_tiny_sd
from magicapture_pipeline.core.models.families import FamilyAdapter
from magicapture_pipeline.core.models.loading import load_components, pooling_modules, token_ids
from tiny_sdxl import TINY_SDXL, TOKENS, write_sdxl_concept

PROMPT = "a photo of a <v1> person in the style of <v2>"


@pytest.fixture(scope="module")
def tiny_sd15(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny_sd", TinyModelConfig(sample_size=32))


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("xl") / "tiny_sdxl", TINY_SDXL)


def _config(folder, component: str) -> dict:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((folder / component / name).read_text())


def _assert_inherits(saved: dict, wanted: dict, where: str) -> None:
    wrong = {key: (saved.get(key, "<missing>"), value) for key, value in wanted.items()
             if saved.get(key, "<missing>") != value}  # fmt: skip
    assert not wrong, f"{where}: (tiny, published) {wrong}"


def test_tiny_sd_carries_sd15s_published_non_size_fields(tiny_sd15):
    """Break tried: the old builder (tokenizer's own special ids, no ``clip_sample``): the text
    encoder's bos/eos/pad and the scheduler's clip_sample differed."""
    _assert_inherits(_config(tiny_sd15, "unet"), published.SD15_UNET, "unet")
    _assert_inherits(_config(tiny_sd15, "vae"), published.SD15_VAE, "vae")
    _assert_inherits(_config(tiny_sd15, "text_encoder"), published.CLIP_L_TEXT, "text_encoder")
    scheduler = _config(tiny_sd15, "scheduler")
    _assert_inherits(scheduler, published.SD15_SCHEDULER, "scheduler")
    assert scheduler["_class_name"] == "PNDMScheduler"
    # the quirks, literally (SD 1.5's text_encoder/config.json and scheduler_config.json)
    text = _config(tiny_sd15, "text_encoder")
    assert (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"]) == (0, 2, 1)
    assert text["hidden_act"] == "quick_gelu" and scheduler["clip_sample"] is False
    vae = load_components(tiny_sd15).vae.config  # not in the published file: diffusers' defaults
    assert (vae.scaling_factor, vae.force_upcast) == (0.18215, True)


def test_tiny_sdxl_carries_sdxl_bases_published_non_size_fields(tiny_xl):
    """Break tried: the old builder: both text encoders' special ids and the scheduler's
    clip_sample / sample_max_value / use_karras_sigmas differed."""
    for component, wanted in (
        ("unet", published.SDXL_UNET),
        ("vae", published.SDXL_VAE),
        ("text_encoder", published.SDXL_TEXT),
        ("text_encoder_2", published.SDXL_TEXT_2),
        ("scheduler", published.SDXL_SCHEDULER),
    ):
        _assert_inherits(_config(tiny_xl, component), wanted, component)
    assert _config(tiny_xl, "scheduler")["_class_name"] == "EulerDiscreteScheduler"
    second = _config(tiny_xl, "text_encoder_2")
    assert (second["eos_token_id"], second["hidden_act"]) == (2, "gelu")
    vae = _config(tiny_xl, "vae")
    assert (vae["scaling_factor"], vae["force_upcast"]) == (0.13025, True)
    assert _config(tiny_xl, "scheduler")["timestep_spacing"] == "leading"
    unet = _config(tiny_xl, "unet")
    assert (unet["addition_embed_type"], unet["use_linear_projection"]) == ("text_time", True)
    assert load_components(tiny_xl).tokenizer_2.pad_token == "!"  # tokenizer_2's special map


def _pooled_at(encoder, ids: torch.Tensor, position: int) -> torch.Tensor:
    """The projected final hidden state of one token position (what CLIP's pooling returns)."""
    hidden = encoder(ids, output_hidden_states=True).last_hidden_state
    return encoder.text_projection(hidden[:, position])


def test_sdxl_pooled_embedding_is_the_end_of_text_tokens(tiny_xl):
    """On the published ``eos_token_id: 2`` the stock model pools at [V2] (the largest id); the
    project's encoding pools at end-of-text (break tried: ``ensure_end_of_text_pooling`` removed
    from ``load_components``: the pooled embedding was [V2]'s)."""
    from transformers import CLIPTextModelWithProjection

    parts = load_components(tiny_xl)
    adapter = FamilyAdapter(parts)
    adapter.add_placeholder_tokens(TOKENS, ["person", "painting"])
    tokenizer, encoder = parts.tokenizer_2, parts.text_encoder_2
    ids = token_ids(tokenizer, [PROMPT])
    row = ids[0].tolist()
    end, v2 = row.index(tokenizer.eos_token_id), row.index(tokenizer.convert_tokens_to_ids("<v2>"))
    assert row[v2] > tokenizer.eos_token_id  # added after end-of-text, as 49409 > 49407
    with torch.no_grad():
        pooled = adapter.encode([PROMPT], "cpu").pooled
        at_end, at_v2 = _pooled_at(encoder, ids, end), _pooled_at(encoder, ids, v2)
        torch.testing.assert_close(pooled, at_end)
        assert (pooled - at_v2).abs().max() > 1e-3
        # the quirk is real: the published config, loaded as is, pools at [V2]
        stock = CLIPTextModelWithProjection.from_pretrained(
            tiny_xl, subfolder="text_encoder_2", local_files_only=True
        )
        stock.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        stock.get_input_embeddings().weight.copy_(encoder.get_input_embeddings().weight)
        torch.testing.assert_close(stock(ids).text_embeds, at_v2)
    assert parts.text_pooling["clip_g"] == {
        "config_eos_token_id": 2,
        "eos_token_id": tokenizer.eos_token_id,
    }


def test_generation_and_stock_loading_pool_at_end_of_text(tiny_xl, tmp_path):
    """The generate step's pipeline and a stock pipeline given a concept (``load_concept``, also
    the registered pyfunc's path) pool at end-of-text (break tried: the loop over the pipeline's
    encoders removed from ``load_embeddings``: the stock pipeline pooled at [V2])."""
    folder = tmp_path / "concept"
    info, parts = write_sdxl_concept(tiny_xl, folder)
    assert info["text_pooling"]["clip_g"]["config_eos_token_id"] == 2
    pipe = sampling.load_base_pipeline(tiny_xl)
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder),
                               (pipe.tokenizer_2, pipe.text_encoder_2)):  # fmt: skip
        assert encoder.config.eos_token_id == tokenizer.eos_token_id
        cached = [module.eos_token_id for module in pooling_modules(encoder)]
        assert cached and set(cached) == {tokenizer.eos_token_id}
    from diffusers import StableDiffusionXLPipeline

    stock = StableDiffusionXLPipeline.from_pretrained(tiny_xl, local_files_only=True)
    assert {m.eos_token_id for m in pooling_modules(stock.text_encoder_2)} == {2}  # published
    load_concept(stock, folder)
    ids = token_ids(stock.tokenizer_2, [PROMPT])
    end = ids[0].tolist().index(stock.tokenizer_2.eos_token_id)
    with torch.no_grad():
        _, _, pooled, _ = stock.encode_prompt(
            PROMPT, device="cpu", do_classifier_free_guidance=False
        )
        expected = _pooled_at(stock.text_encoder_2, ids, end)
    torch.testing.assert_close(pooled, expected)
