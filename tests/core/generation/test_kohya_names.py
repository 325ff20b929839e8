"""Kohya names of every LoRA module of the official preset on SD 1.5's and SDXL's real
architectures (meta device, no weights): diffusers' own kohya loader
(``diffusers/loaders/lora_conversion_utils.py`` ``_convert_non_diffusers_lora_to_diffusers``)
must map each name back to exactly that module, and the text-encoder names must be ComfyUI's
(comfy/lora.py ``model_lora_keys_clip``: ``lora_te_`` on SD 1.x, ``lora_te1_``/``lora_te2_``
on SDXL) and kohya's (networks/lora.py ``LORA_PREFIX_TEXT_ENCODER``/``1``/``2``)."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from magicapture_pipeline.core.generation.kohya import kohya_module_name, to_kohya
from magicapture_pipeline.core.models.random_weights import SD15_TEXT, SD15_UNET
from magicapture_pipeline.core.models.sdxl import SDXL_TEXT, SDXL_TEXT_2, SDXL_UNET
from magicapture_pipeline.core.training.lora import lora_targets

# ComfyUI comfy/lora.py LORA_CLIP_MAP (the text-encoder module names it maps)
CLIP_NAME = re.compile(r"text_model_encoder_layers_(\d+)_self_attn_(q|k|v|out)_proj")


def _targets(model: torch.nn.Module, target) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if isinstance(target, str):
        return [n for n in names if re.fullmatch(target, n)]
    return [n for n in names if any(n == t or n.endswith(f".{t}") for t in target)]


def _architecture(family: str) -> dict[str, tuple[torch.nn.Module, object]]:
    unet_target, text_target = lora_targets("official")
    with torch.device("meta"):
        if family == "sd15":
            return {
                "unet": (UNet2DConditionModel(**SD15_UNET), unet_target),
                "text_encoder": (CLIPTextModel(CLIPTextConfig(**SD15_TEXT)), text_target),
            }
        return {
            "unet": (UNet2DConditionModel(**SDXL_UNET), unet_target),
            "text_encoder": (CLIPTextModel(CLIPTextConfig(**SDXL_TEXT)), text_target),
            "text_encoder_2": (
                CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2)),
                text_target,
            ),
        }


@pytest.mark.parametrize(
    ("family", "counts", "prefixes"),
    [
        ("sd15", {"unet": 144, "text_encoder": 48}, {"text_encoder": "lora_te_"}),
        (
            "sdxl",
            {"unet": 630, "text_encoder": 48, "text_encoder_2": 128},
            {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
        ),
    ],
)
def test_every_official_module_round_trips_through_diffusers_kohya_loader(family, counts, prefixes):
    modules = {c: _targets(m, t) for c, (m, t) in _architecture(family).items()}
    assert {c: len(v) for c, v in modules.items()} == counts
    diffusers_state = {}
    for component, names in modules.items():
        for name in names:
            diffusers_state[f"{component}.{name}.lora.down.weight"] = torch.zeros(1, 2)
            diffusers_state[f"{component}.{name}.lora.up.weight"] = torch.zeros(2, 1)
    kohya = to_kohya(diffusers_state, family)
    assert len(kohya) == 3 * sum(counts.values())  # down, up, alpha per module
    for component, prefix in prefixes.items():
        for name in modules[component]:
            key = kohya_module_name(component, name, family)
            assert key.startswith(prefix) and CLIP_NAME.fullmatch(key.removeprefix(prefix)), key
    back, alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    found: dict[str, set[str]] = {}
    for component in modules:  # then the conversion load_lora_weights applies before peft
        part = {k.partition(".")[2]: v for k, v in back.items() if k.startswith(f"{component}.")}
        peft = (
            convert_unet_state_dict_to_peft if component == "unet" else convert_state_dict_to_peft
        )(part)
        found[component] = {re.sub(r"\.lora_[AB]\.weight$", "", k) for k in peft}
    # transformers 5's CLIPTextModel has no `text_model` level; kohya's names (and diffusers'
    # reading of them) keep transformers 4's path
    expected = {
        c: {n if c == "unet" or n.startswith("text_model.") else f"text_model.{n}" for n in v}
        for c, v in modules.items()
    }
    assert found == expected
    assert len(alphas) == sum(counts.values())
