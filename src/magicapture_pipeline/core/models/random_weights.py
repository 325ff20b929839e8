"""Random-weight models of the real architectures (SD 1.5's here, SDXL's in :mod:`.sdxl`).

The speed benchmark and tests build them with diffusers / transformers classes, without
downloading any weights; seeded, frozen, with offline tokenizers and SD's DDPM schedule.
"""

from __future__ import annotations

from typing import Any

import torch

from magicapture_pipeline.core.models.loading import SD15, SDXL, SDComponents
from magicapture_pipeline.core.models.offline_tokenizer import MAX_LENGTH, build_offline_tokenizer
from magicapture_pipeline.core.models.sdxl import SECOND_PAD_TOKEN

# Stable Diffusion 1.5's architectures (UNet, VAE, CLIP-L text encoder), for random-weight models
# of the real size: the speed benchmark and tests build them with diffusers/transformers classes.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD15_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "vocab_size": 49410,  # SD's vocabulary + [V1], [V2]
    "hidden_act": "quick_gelu",
}


def build_random_model(  # noqa: PLR0913 (one architecture dict per component)
    unet: dict[str, Any],
    vae: dict[str, Any],
    text: dict[str, Any],
    *,
    resolution: int,
    family: str = SD15,
    text_2: dict[str, Any] | None = None,
) -> SDComponents:
    """Random-weight components of the given architectures (``SD15_*``, ``sdxl.SDXL_*`` or a
    scaled copy), seeded, frozen, with offline tokenizers and SD's DDPM schedule: what the speed
    benchmark trains at the real sizes without downloading weights.

    Args:
        unet, vae, text: ``UNet2DConditionModel``, ``AutoencoderKL`` and ``CLIPTextConfig``
            settings (the VAE's block types follow its ``block_out_channels``).
        resolution: image side in pixels (the VAE's ``sample_size``; SDXL's UNet gets
            ``resolution / 8``, so its attention resolutions are those it really trains at).
        family: ``"sd15"`` or ``"sdxl"`` (then ``text_2`` is the second text encoder's config).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(tok: Any, settings: dict[str, Any]) -> CLIPTextConfig:
        return CLIPTextConfig(
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **{**settings, "vocab_size": len(tok)},
        )

    torch.manual_seed(0)
    tokenizer = build_offline_tokenizer()
    text_encoder = CLIPTextModel(text_config(tokenizer, text))
    tokenizer_2 = text_encoder_2 = None
    if family == SDXL:
        tokenizer_2 = build_offline_tokenizer(pad_token=SECOND_PAD_TOKEN)
        text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, text_2 or {}))
    levels = len(vae["block_out_channels"])
    autoencoder = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        **{"sample_size": resolution, **vae},
    )
    unet_config = dict(unet)
    if family == SDXL:
        unet_config["sample_size"] = resolution // 8
    denoiser = UNet2DConditionModel(**unet_config)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )
    for module in (text_encoder, text_encoder_2, autoencoder, denoiser):
        if module is not None:
            module.requires_grad_(False)
    return SDComponents(
        tokenizer, text_encoder, autoencoder, denoiser, scheduler, "random",
        family=family, tokenizer_2=tokenizer_2, text_encoder_2=text_encoder_2,
    )  # fmt: skip
