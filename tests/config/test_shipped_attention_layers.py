"""The shipped configs' Eq. 8 resolution, tied to the layers it selects on the real architectures
(issue 18 §5): SD 1.5 (base env) must read the authors' five 16x16 ``attn2`` layers, SDXL (sdxl
env) its 32x32 ones. The UNets are built from the published architecture dicts on the meta device
(no weights, no memory), so a changed number in conf/ or in the pydantic default shows as the
wrong layer list (break tried: ``resolution: 32`` in conf/base/parameters_train_stage_two.yml).
"""

from __future__ import annotations

import pytest

from conftest import PROJECT_ROOT

# The authors' code (junhahyung/MagiCapture, lora_diffusion_/magicapture_train.py) reads the
# cross-attention maps of SD 1.5 at 16x16: the two attn2 of down_blocks.2 and the three of
# up_blocks.1, one transformer block each.
SD15_AUTHORS_LAYERS = [
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
]
# SDXL base at 1024 px: its 32x32 level (ours, docs: stage_two.attention.resolution), 2
# attentions in down_blocks.2 and 3 in up_blocks.0, 10 transformer blocks each.
SDXL_32_LAYERS = [
    f"{block}.attentions.{a}.transformer_blocks.{t}.attn2"
    for block, count in (("down_blocks.2", 2), ("up_blocks.0", 3))
    for a in range(count)
    for t in range(10)
]


def _params(env: str) -> dict:
    from magicapture_pipeline.config.sections import effective_parameters
    from magicapture_pipeline.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    loader = CONFIG_LOADER_CLASS(str(PROJECT_ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)
    return effective_parameters(loader["parameters"])


def _meta_unet(architecture: dict):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(**architecture)


@pytest.mark.parametrize(("env", "family", "expected"), [
    ("base", "sd15", SD15_AUTHORS_LAYERS),
    ("sdxl", "sdxl", SDXL_32_LAYERS),
])  # fmt: skip
def test_shipped_attention_resolution_reads_the_intended_layers(env, family, expected):
    from magicapture_pipeline.core.models.attention import cross_attention_layers
    from magicapture_pipeline.core.models.random_weights import SD15_UNET
    from magicapture_pipeline.core.models.sdxl import SDXL_UNET

    params = _params(env)
    attention = params["stage_two"]["attention"]
    assert attention["layers"] == []  # the resolution picks the layers
    unet = _meta_unet(SD15_UNET if family == "sd15" else SDXL_UNET)
    latent = params["preprocess"]["resolution"] // 8
    assert latent == unet.config.sample_size  # the env trains at the model's native size
    names = cross_attention_layers(unet, attention["resolution"], latent_size=latent)
    assert names == expected
