"""Stable Diffusion XL: its architecture and its text conditioning (tiny builder: ``builders``).

SDXL (Podell et al. 2023, arXiv 2307.01952) conditions its UNet on three things, all built here the
way diffusers' ``StableDiffusionXLPipeline`` builds them at inference (so training and sampling see
the same conditioning):

* the penultimate hidden states of two CLIP text encoders, concatenated per token: CLIP ViT-L
  (768-d, ``text_encoder``) and OpenCLIP ViT-bigG (1280-d, ``text_encoder_2``), 2048-d in all;
* the pooled, projected output of the second encoder (1280-d, ``text_embeds``);
* six "time ids": original size, crop top-left and target size (paper Sec. 2.2, micro-conditioning).

MagiCapture's placeholder tokens get a row in *both* embedding tables (``core.tokens`` works per
tokenizer / encoder pair); an exported token file holds both rows as ``clip_l`` / ``clip_g``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from magicapture_pipeline.core.models.loading import token_ids

logger = logging.getLogger(__name__)

# SDXL base 1.0's architectures, for random-weight models of the real size (meta-device counts in
# tests, the benchmark). Values from stabilityai/stable-diffusion-xl-base-1.0's config files.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + 1280 pooled
    "norm_num_groups": 32,
}
SDXL_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,  # overflows in fp16: diffusers decodes it in fp32
}
SDXL_TEXT: dict[str, Any] = {  # CLIP ViT-L/14, as in SD 1.5
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "vocab_size": 49410,
    "hidden_act": "quick_gelu",
}
SDXL_TEXT_2: dict[str, Any] = {  # OpenCLIP ViT-bigG/14 with its text projection
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "vocab_size": 49410,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)
SECOND_PAD_TOKEN = "!"  # SDXL's tokenizer_2 pads with "!" (tokenizer_2/special_tokens_map.json)


# --------------------------------------------------------------------------- conditioning


def encode_prompts(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    prompts: Sequence[str],
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """SDXL's prompt conditioning, as ``StableDiffusionXLPipeline.encode_prompt`` builds it.

    Each prompt goes through both tokenizers (padded to 77); each encoder's penultimate hidden
    states (``hidden_states[-2]``) are concatenated along the feature axis; the pooled embedding
    is the second encoder's projected output (``text_embeds``). Differentiable: placeholder rows
    spliced into either embedding table receive gradients through both outputs.

    Args:
        tokenizers: ``(tokenizer, tokenizer_2)``.
        text_encoders: ``(text_encoder, text_encoder_2)``; the last must have a projection.
        prompts: the texts.
        device: where the ids go (default: the first encoder's device).

    Returns:
        ``(ids, hidden, pooled)``: the first tokenizer's ids ``(B, 77)`` (the token positions of
        both tokenizers agree: same vocabulary and merges), ``(B, 77, d1 + d2)`` and
        ``(B, d_proj)``.
    """
    if len(tokenizers) != 2 or len(text_encoders) != 2:
        raise ValueError("SDXL needs two tokenizers and two text encoders")
    states, first_ids, pooled = [], None, None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        target = device if device is not None else encoder.device
        ids = token_ids(tokenizer, prompts).to(target)
        first_ids = ids if first_ids is None else first_ids
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else None
    if pooled is None:
        raise ValueError("text_encoder_2 has no projection (CLIPTextModelWithProjection needed)")
    hidden = torch.cat([s.to(states[0].device) for s in states], dim=-1)
    return first_ids, hidden, pooled.to(hidden.device)


def time_ids(
    height: int,
    width: int,
    batch: int = 1,
    crop_top_left: tuple[int, int] = (0, 0),
    original: tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """SDXL's micro-conditioning ``(batch, 6)``: original size, crop top-left, target size.

    Training crops are the full training frame (``original = target = (height, width)``, crop at
    the origin), the values the pipeline passes at sampling time by default, so a concept learns
    under the conditioning it is later sampled with (ours; diffusers' SDXL fine-tuning scripts
    record each photo's size before resizing instead).
    """
    original = original or (height, width)
    row = [*original, *crop_top_left, height, width]
    return torch.tensor([row] * batch, dtype=dtype, device=device)


def added_conditions(
    pooled: Tensor, height: int, width: int, batch: int | None = None
) -> dict[str, Tensor]:
    """The UNet's ``added_cond_kwargs`` (``text_embeds``, ``time_ids``) for images of
    ``height`` x ``width`` pixels; ``pooled`` is repeated to ``batch`` rows when given."""
    if batch is not None and pooled.shape[0] != batch:
        pooled = pooled.expand(batch, -1) if pooled.shape[0] == 1 else pooled
    ids = time_ids(height, width, pooled.shape[0], device=pooled.device, dtype=pooled.dtype)
    return {"text_embeds": pooled, "time_ids": ids}
