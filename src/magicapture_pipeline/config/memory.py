"""Memory options of the training steps (``stage_one.memory`` / ``stage_two.memory``): the
switches the field's training scripts offer, each with its source. Applied to the models by
``core.models.memory.apply_memory_options``; their cost is estimated by
``speed_bench.memory`` (``data/08_reporting/bench_memory.md``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from magicapture_pipeline.config.recipes import library, ours


class MemoryConfig(BaseModel):
    """What the trainers build to lower peak memory; none changes the result beyond rounding
    except ``vae_tile_latent`` (tiles blended)."""

    model_config = ConfigDict(extra="forbid")

    frozen_weights_16bit: bool = Field(
        True,
        description="Under mixed_precision fp16/bf16, hold the frozen UNet, VAE and text "
        "encoder(s) in that dtype; LoRA, placeholder rows and the token tables stay fp32 "
        "(diffusers' weight_dtype). SDXL's VAE under fp16 and the VAE under "
        "identity.autocast_dtype fp32 stay fp32. No effect when mixed precision is off (CPU). "
        "Authors' code: off (fp32 weights under autocast).",
        json_schema_extra=library(
            "diffusers examples train_text_to_image_lora.py / train_dreambooth_lora.py: unet, "
            "vae, text_encoder .to(dtype=weight_dtype) under --mixed_precision fp16/bf16, "
            "trainable params cast_training_params(float32); train_text_to_image_lora_sdxl.py "
            "keeps the VAE fp32 ('to avoid NaN losses')",
            authors=False,  # magicapture_train.py: fp32 from_pretrained, torch.cuda.amp.autocast
        ),
    )

    unet_gradient_checkpointing: bool = Field(
        False,
        json_schema_extra=ours(
            "off: ~+1 UNet forward per step, needed only where memory is short; the paper does "
            "not state it",
            authors=True,  # train_magicapture.sh --gradient_checkpointing
        ),
        description="Recompute the UNet's block activations in backward instead of keeping them "
        "(diffusers enable_gradient_checkpointing; authors' code: on, train_magicapture.sh "
        "--gradient_checkpointing; paper: not stated; ours: off, ~+1 UNet forward per step).",
    )
    text_encoder_gradient_checkpointing: bool = Field(
        False,
        description="The same for the CLIP text encoder(s) (transformers "
        "activation_checkpointing_enable; authors' code and paper: not used; ours: off, 77 "
        "tokens keep little).",
        json_schema_extra=ours("off: 77 tokens keep little; neither paper nor authors' code"),
    )
    vae_gradient_checkpointing: bool = Field(
        False,
        description="The same for the VAE decoder that Eq. 7 back-propagates through (diffusers "
        "AutoencoderKL enable_gradient_checkpointing; neither paper nor authors' code; ours: "
        "off; the largest saving when Eq. 7 decodes the full image).",
        json_schema_extra=ours("off: recomputation costs a VAE decode per step"),
    )
    vae_tile_latent: int | None = Field(
        None,
        ge=8,
        description="Decode/encode the VAE in tiles of this many latent pixels (diffusers "
        "AutoencoderKL enable_tiling with tile_latent_min_size set; tiles blended, an "
        "approximate image, ~+40 % decode work); null = off (ours). Alone it keeps every "
        "tile's activations for Eq. 7's backward; with vae_gradient_checkpointing each tile is "
        "recomputed alone (SDXL fp16 full decode: 12.7 -> 7.5 GiB, bench_memory.md).",
        json_schema_extra=ours("off: tiles give an approximate image"),
    )
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa",
        description="Every attention Eq. 8 does not read: sdpa = torch's fused "
        "scaled_dot_product_attention (diffusers AttnProcessor2_0; ours); eager = diffusers "
        "AttnProcessor, softmax(QK^T) materialised in every layer as the authors' "
        "register_attention_control does (magicapture_train.py loss_step; not in recipe: "
        "official, the values agree up to rounding).",
        json_schema_extra=ours("sdpa: the same values up to rounding, without the full maps"),
    )
