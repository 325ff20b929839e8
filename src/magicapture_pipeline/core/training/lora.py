"""Where LoRA goes: the module sets of each preset, and which modules carry an adapter."""

from __future__ import annotations

import torch

# Official (and peft/diffusers) module names of the LoRA presets.
UNET_CROSS_ATTENTION = r".*attn2\.(to_q|to_k|to_v|to_out\.0)$"
# The authors' set (lora_diffusion_/lora.py inject_trainable_lora with target_replace_module
# {"CrossAttention", "Attention", "GEGLU"}): every nn.Linear inside those modules, i.e. attn1 and
# attn2 q/k/v/out and the GEGLU projection ff.net.0.proj (ff.net.2 sits outside GEGLU):
# 16 transformer blocks x 9 = 144 modules on SD 1.5.
UNET_OFFICIAL = r".*(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|.*\.ff\.net\.0\.proj$"
UNET_CROSS_ATTENTION_KV = r".*attn2\.(to_k|to_v)$"
TEXT_ENCODER_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]


def lora_targets(preset: str) -> tuple[str | list[str], list[str] | None]:
    """UNet and text-encoder target modules of a LoRA preset.

    ``paper``: the UNet cross-attention projections (``attn2`` q/k/v/out, 64 modules on SD 1.5),
    nothing in the text encoder. ``official``: the authors' set, UNet self- and cross-attention
    q/k/v/out and the feed-forward's GEGLU projection ``ff.net.0.proj`` (144 on SD 1.5), plus the
    text encoder's attention projections. ``custom_diffusion``: only the key and value
    projections of the UNet cross-attention (the weights Custom Diffusion fine-tunes; here as a
    LoRA baseline).
    """
    if preset == "paper":
        return UNET_CROSS_ATTENTION, None
    if preset == "official":
        return UNET_OFFICIAL, list(TEXT_ENCODER_ATTENTION)
    if preset == "custom_diffusion":
        return UNET_CROSS_ATTENTION_KV, None
    raise ValueError(f"unknown LoRA preset {preset!r}")


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """Names of the modules that carry a LoRA adapter (``...lora_A`` parents)."""
    return sorted(
        name.removesuffix(".lora_A")
        for name, _ in model.named_modules()
        if name.endswith(".lora_A")
    )
