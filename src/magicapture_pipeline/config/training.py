"""Configuration of the base model and the two training stages (``parameters_model.yml``,
``parameters_train_stage_one.yml``, ``parameters_train_stage_two.yml``).

Defaults are the paper's (MagiCapture, arXiv 2309.06895 v2, "paper") or, where the paper is silent,
the authors' code (junhahyung/MagiCapture, "official"); each ``description`` says which.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelConfig(_Strict):
    """Architecture of the tiny random SD / SDXL built for the CPU demos (never used with real
    weights)."""

    family: Literal["sd15", "sdxl"] = Field(
        "sd15",
        description="Which layout to build: sd15 (core.models.build_tiny_sd) or sdxl "
        "(core.sdxl.build_tiny_sdxl: text_time UNet, two text encoders). Only the builder reads "
        "it; loading reads the family from the saved model_index.json.",
    )
    seed: int = Field(
        0, ge=0, lt=2**32, description="Seed of the random weights (same seed, same model)."
    )
    sample_size: int = Field(
        128, ge=8, multiple_of=8, description="Image size in pixels the model is laid out for."
    )
    unet_channels: list[int] = Field(
        [32, 64],
        min_length=1,
        description="UNet block_out_channels (diffusers' test UNet: 32, 64).",
    )
    layers_per_block: int = Field(1, ge=1, description="Resnet layers per UNet block.")
    down_block_types: list[str] = Field(
        ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        description="UNet down blocks; cross-attention at both levels so AR has a map to read.",
    )
    up_block_types: list[str] = Field(
        ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], description="UNet up blocks."
    )
    attention_head_dim: int = Field(8, ge=1, description="UNet attention head dimension.")
    norm_num_groups: int = Field(8, ge=1, description="GroupNorm groups in the UNet and the VAE.")
    vae_channels: list[int] = Field(
        [8, 16, 32, 32],
        min_length=1,
        description="VAE block channels; 4 levels = x8 downsampling like SD.",
    )
    text_hidden_size: int = Field(
        32, ge=1, description="CLIP text hidden size = UNet cross_attention_dim."
    )
    text_layers: int = Field(2, ge=1, description="CLIP text encoder layers.")
    text_heads: int = Field(4, ge=1, description="CLIP text encoder attention heads.")
    text_2_hidden_size: int = Field(
        64,
        ge=1,
        description="SDXL only: width of the second text encoder (SDXL: 1280 vs 768); UNet "
        "cross_attention_dim = text_hidden_size + this.",
    )
    text_2_layers: int = Field(
        2, ge=1, description="SDXL only: layers of the second text encoder."
    )
    transformer_layers_per_block: list[int] = Field(
        [1, 1],
        min_length=1,
        description="SDXL only: transformer layers per UNet level, one per unet_channels entry "
        "(SDXL: 1, 2, 10).",
    )
    addition_time_embed_dim: int = Field(
        8, ge=1, description="SDXL only: width of each time-id embedding (SDXL: 256)."
    )
    extra_words: list[str] = Field(
        [], description="Words beyond the built-in template words that get their own token."
    )

    @model_validator(mode="after")
    def _divisible(self) -> TinyModelConfig:
        widths = {"text_hidden_size": self.text_hidden_size}
        if self.family == "sdxl":
            widths["text_2_hidden_size"] = self.text_2_hidden_size
            if len(self.transformer_layers_per_block) != len(self.unet_channels):
                raise ValueError(
                    f"transformer_layers_per_block {self.transformer_layers_per_block} needs one "
                    f"entry per unet_channels level ({len(self.unet_channels)})"
                )
        for name, width in widths.items():
            if width % self.text_heads:
                raise ValueError(
                    f"{name} ({width}) must be a multiple of text_heads ({self.text_heads})"
                )
        for name in ("unet_channels", "vae_channels"):
            bad = [c for c in getattr(self, name) if c < 1 or c % self.norm_num_groups]
            if bad:
                raise ValueError(
                    f"{name} {getattr(self, name)}: each must be a positive multiple of "
                    f"norm_num_groups ({self.norm_num_groups}); {bad} are not"
                )
        return self


class ModelConfig(_Strict):
    """The base model (``params:model``)."""

    pretrained: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Diffusers folder or hub id of the base model (paper: Stable Diffusion 1.5; "
        "an SDXL folder also works, its family is read from model_index.json). SDXL's VAE "
        "overflows in fp16, so it encodes and decodes in fp32 whatever the mixed precision.",
    )
    revision: str | None = Field(None, description="Hub revision; ignored for a local folder.")
    tiny: TinyModelConfig | None = Field(
        None, description="Demo only: build a tiny random SD at `pretrained` when it is missing."
    )


class TokensConfig(_Strict):
    """Placeholder tokens [V1] (person) and [V2] (style)."""

    person: str = Field("<v1>", description="Text of [V1], the person token.")
    style: str = Field("<v2>", description="Text of [V2], the style token.")
    person_init: str = Field(
        "person", description="Word whose embedding initialises [V1] (official: 'person')."
    )
    style_init: str = Field(
        "painting",
        description="Word whose embedding initialises [V2] (paper/official unspecified; "
        "'painting' matches the reference template).",
    )


class _TrainingLoopConfig(_Strict):
    """What the two training stages share: prompts, optimiser loop, augmentation, checkpoints."""

    seed: int = Field(0, ge=0, lt=2**32, description="Seed of sampling, augmentation and noise.")
    tokens: TokensConfig = Field(default_factory=TokensConfig, description="Placeholder tokens.")
    source_templates: list[str] = Field(
        ["a photo of a {} person"], description="Prompts for source images (official)."
    )
    reference_templates: list[str] = Field(
        ["a painting of a person in the style of {}"],
        description="Prompts for reference images (official).",
    )
    gradient_accumulation_steps: int = Field(
        4,
        ge=1,
        description="Micro-batches of one image per optimiser step (paper: batch 1, "
        "accumulation 4 as in the official code).",
    )
    lr_scheduler: str = Field("constant", description="diffusers get_scheduler name (official).")
    lr_warmup_steps: int = Field(
        0, ge=0, description="Warm-up steps of the lr schedule (official: 0)."
    )
    adam_weight_decay: float = Field(
        1e-2, ge=0.0, description="AdamW weight decay (diffusers default)."
    )
    max_grad_norm: float = Field(
        1.0, gt=0.0, description="Gradient clipping norm (diffusers default)."
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "fp16", description="Accelerate mixed precision; forced to 'no' on CPU."
    )
    cache_latents: bool = Field(
        True, description="Encode each augmented image once instead of every step."
    )
    hflip: bool = Field(True, description="Also train on horizontally flipped copies.")
    mask_floor: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Soften masks as (M + floor) / max before Eq. 4-6 (paper: binary, 0; "
        "official: 0.01).",
    )
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every K steps; 0 = never.")
    checkpoint_dir: str | None = Field(None, description="Folder of checkpoints (resume reads it).")
    resume: bool = Field(
        False,
        description="Continue from the newest complete checkpoint in checkpoint_dir (incomplete "
        "or corrupt ones are skipped with a warning).",
    )
    keep_checkpoints: int = Field(
        2,
        ge=0,
        description="Keep the newest K complete checkpoints of the stage, delete older ones "
        "after each save; 0 = keep all (ours: bounds disk use on long runs).",
    )
    log_every: int = Field(1, ge=1, description="History row every N optimiser steps.")
    device: str | None = Field(None, description="Force a device; None = accelerate's choice.")


class StageOneConfig(_TrainingLoopConfig):
    """Stage one: only the [V1]/[V2] embedding rows train (paper Sec. 3.2, 'two-phase')."""

    learning_rate: float = Field(
        5e-4, gt=0.0, description="AdamW lr of the embeddings (paper: 5e-4)."
    )
    max_steps: int = Field(1200, ge=1, description="Optimiser steps (paper: 1200).")


class LoraConfigModel(_Strict):
    """LoRA adapters of stage two."""

    rank: int = Field(4, ge=1, description="LoRA rank (paper: 4).")
    alpha: float = Field(4.0, gt=0.0, description="LoRA alpha (diffusers' scripts: alpha = rank).")
    preset: Literal["paper", "official", "custom_diffusion"] = Field(
        "paper",
        description="paper = UNet cross-attention q/k/v/out; official = self- and cross-attention, "
        "feed-forward and text-encoder attention; custom_diffusion = cross-attention k/v only "
        "(the Custom Diffusion baseline, as LoRA).",
    )
    init: Literal["gaussian", "default"] = Field(
        "default", description="peft init_lora_weights ('default' = B zero, output unchanged)."
    )


class IdentityConfig(_Strict):
    """Identity loss, Eq. 7."""

    mode: Literal["single_pass", "two_pass", "off"] = Field(
        "single_pass",
        description="single_pass = x0 from the same UNet forward; two_pass = official extra "
        "forward; off.",
    )
    weight: float = Field(1.0, ge=0.0, description="lambda_id (paper: 1; official: 0.25).")
    threshold_fraction: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Identity loss only when t < T' = fraction * T (paper: 0.8).",
    )
    checkpoint: str | None = Field(
        None, description="arcface_torch IResNet checkpoint; None = identity loss off (logged)."
    )
    arch: str = Field("r100", description="IResNet arch of the checkpoint (official: r100).")
    random_init: bool = Field(
        False,
        description="Tests/benchmarks only: a randomly initialised IResNet (and TAESD decoder "
        "when identity.tiny_autoencoder is null).",
    )
    decoder: Literal["vae", "tiny_autoencoder"] = Field(
        "vae",
        description="What decodes the x0 estimate for ArcFace: vae = the base model's VAE "
        "(paper); tiny_autoencoder = a distilled TAESD decoder (diffusers AutoencoderTiny, ~10x "
        "cheaper decode, an approximate image).",
    )
    tiny_autoencoder: str | None = Field(
        "madebyollin/taesd",
        description="Folder or hub id of the AutoencoderTiny for decoder: tiny_autoencoder (TAESD "
        "for SD 1.x, MIT licence); null = random weights (needs random_init).",
    )
    decode_region: Literal["face_window", "full"] = Field(
        "face_window",
        description="face_window = VAE-decode only the latent window around the face ArcFace "
        "reads (core.arcface.face_latent_window; ~2x cheaper at SD size); full = decode the "
        "whole x0 estimate (official).",
    )
    window_margin: int = Field(
        4,
        ge=0,
        description="Latent pixels added on each side of the face window (VAE decoder receptive "
        "field); only for decode_region: face_window.",
    )
    autocast_dtype: Literal["none", "bf16", "fp16"] = Field(
        "bf16",
        description="Autocast of the identity branch only (VAE decode + ArcFace; alignment stays "
        "fp32): bf16 (fp32 range, no loss scaling, CPU and CUDA); fp16 (CUDA only, else off); "
        "none = the trainer's own mixed precision.",
    )

    @model_validator(mode="after")
    def _decoder_source(self) -> IdentityConfig:
        needs_source = self.decoder == "tiny_autoencoder" and self.tiny_autoencoder is None
        if needs_source and not self.random_init:
            raise ValueError(
                "identity.decoder: tiny_autoencoder needs identity.tiny_autoencoder (a folder "
                "or hub id of TAESD); null is allowed only with random_init (tests)"
            )
        return self


class AttentionConfig(_Strict):
    """Attention refocusing, Eq. 8."""

    enabled: bool = Field(True, description="Use the attention refocusing loss (paper: on).")
    weight: float = Field(2.5, ge=0.0, description="lambda_attn (paper: 2.5).")
    resolution: int = Field(
        16,
        ge=1,
        description="Side in latent pixels (at the UNet's sample_size) of the attn2 maps read. "
        "SD 1.5 at 512 px: 16 (official: down_blocks.2 + up_blocks.1). SDXL at 1024 px (ours): "
        "32 = down_blocks.2 + up_blocks.0, the same 1/32 of the image side as SD 1.5's 16/512 and "
        "SDXL's deepest cross-attention level (its 64x64 level is 1/16 and holds 10 of 60 "
        "down/up attn2 layers).",
    )
    layers: list[str] = Field(
        [],
        description="Explicit attn2 module names to read instead of `resolution` (e.g. "
        "'up_blocks.0.attentions.1.transformer_blocks.3.attn2'); empty = every down/up attn2 "
        "at `resolution`.",
    )
    scale_order: Literal["average_then_scale", "scale_then_average"] = Field(
        "average_then_scale",
        description="Eq. 8 min-max scaling (min/max held constant either way): average the "
        "head/layer maps then scale (paper: one map A_k per token; 1/heads the capture memory) "
        "or scale each map then average (authors' code, magicapture_train.py loss_step).",
    )


class StageTwoConfig(_TrainingLoopConfig):
    """Stage two: LoRA + embeddings with the three tasks (paper Sec. 3)."""

    composed_templates: list[str] = Field(
        ["a photo of a {v1} person in the {v2} style"],
        description="Composed prompts, pseudo-labelled by a reference image (paper Sec. 3.1).",
    )
    task_weights: list[float] = Field(
        [1.0, 1.0, 1.0],
        min_length=3,
        max_length=3,
        description="Sampling odds of source:reference:composed (paper: 1:1:1).",
    )
    lora: LoraConfigModel = Field(default_factory=LoraConfigModel, description="LoRA.")
    learning_rate: float = Field(1e-4, gt=0.0, description="LoRA lr (paper: 1e-4).")
    embedding_learning_rate: float = Field(
        1e-5, ge=0.0, description="Embedding lr (paper: 1e-5); 0 freezes the embeddings."
    )
    max_steps: int = Field(1500, ge=1, description="Optimiser steps (paper: 1500).")
    identity: IdentityConfig = Field(default_factory=IdentityConfig, description="Eq. 7.")
    attention: AttentionConfig = Field(default_factory=AttentionConfig, description="Eq. 8.")
    heatmap_every: int = Field(
        100, ge=0, description="Attention-heatmap figure every N steps; 0 = off."
    )

    @model_validator(mode="after")
    def _three_tasks(self) -> StageTwoConfig:
        if len(self.task_weights) != 3 or min(self.task_weights) < 0 or sum(self.task_weights) <= 0:
            raise ValueError("task_weights needs three non-negative odds with a positive sum")
        return self
