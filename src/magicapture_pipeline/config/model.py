"""Configuration of the base model (``parameters_model.yml``): the pretrained folder or hub id,
and the tiny random SD / SDXL the CPU demos build.

Each ``description`` says where its default comes from (paper / authors' code / ours).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from magicapture_pipeline.config.recipes import library, ours, paper


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelConfig(_Strict):
    """Architecture of the tiny random SD / SDXL built for the CPU demos (never used with real
    weights)."""

    family: Literal["sd15", "sdxl"] = Field(
        "sd15",
        description="Which layout to build: sd15 (core.models.builders.build_tiny_sd) or "
        "sdxl (core.models.builders.build_tiny_sdxl: text_time UNet, two text encoders). Only the "
        "builder reads it; loading reads the family from the saved model_index.json.",
        json_schema_extra=ours(
            "SD 1.5, the paper's family; the tiny random model the CPU demos build (trains in "
            "seconds)"
        ),
    )
    seed: int = Field(
        0,
        ge=0,
        lt=2**32,
        description="Seed of the random weights (same seed, same model).",
        json_schema_extra=ours("any fixed seed; recorded with the run, so a run repeats"),
    )
    sample_size: int = Field(
        128,
        ge=8,
        multiple_of=8,
        description="Image size in pixels the model is laid out for.",
        json_schema_extra=ours(
            "the tiny random model the CPU demos build (trains in seconds): 128 px"
        ),
    )
    unet_channels: list[int] = Field(
        [32, 64],
        min_length=1,
        description="UNet block_out_channels (diffusers' test UNet: 32, 64).",
        json_schema_extra=library("diffusers' own test UNet: block_out_channels (32, 64)"),
    )
    layers_per_block: int = Field(
        1,
        ge=1,
        description="Resnet layers per UNet block.",
        json_schema_extra=ours("the tiny random model the CPU demos build (trains in seconds)"),
    )
    down_block_types: list[str] = Field(
        ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        description="UNet down blocks; cross-attention at both levels so AR has a map to read.",
        json_schema_extra=ours("cross-attention at both levels, so Eq. 8 has a map to read"),
    )
    up_block_types: list[str] = Field(
        ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        description="UNet up blocks.",
        json_schema_extra=ours("cross-attention at both levels, so Eq. 8 has a map to read"),
    )
    attention_head_dim: int = Field(
        8,
        ge=1,
        description="UNet attention head dimension.",
        json_schema_extra=ours("the tiny random model the CPU demos build (trains in seconds)"),
    )
    norm_num_groups: int = Field(
        8,
        ge=1,
        description="GroupNorm groups in the UNet and the VAE.",
        json_schema_extra=ours("the tiny random model the CPU demos build (trains in seconds)"),
    )
    vae_channels: list[int] = Field(
        [8, 16, 32, 32],
        min_length=1,
        description="VAE block channels; 4 levels = x8 downsampling like SD.",
        json_schema_extra=ours(
            "4 levels = x8 downsampling like SD's VAE; the tiny random model the CPU demos build "
            "(trains in seconds)"
        ),
    )
    text_hidden_size: int = Field(
        32,
        ge=1,
        description="CLIP text hidden size = UNet cross_attention_dim.",
        json_schema_extra=ours("the tiny random model the CPU demos build (trains in seconds)"),
    )
    text_layers: int = Field(
        2,
        ge=1,
        description="CLIP text encoder layers.",
        json_schema_extra=ours("the tiny random model the CPU demos build (trains in seconds)"),
    )
    text_heads: int = Field(
        4,
        ge=1,
        description="CLIP text encoder attention heads.",
        json_schema_extra=ours("the tiny random model the CPU demos build (trains in seconds)"),
    )
    text_2_hidden_size: int = Field(
        64,
        ge=1,
        description="SDXL only: width of the second text encoder (SDXL: 1280 vs 768); UNet "
        "cross_attention_dim = text_hidden_size + this.",
        json_schema_extra=ours(
            "SDXL only: wider than the first encoder as in SDXL (1280 vs 768); the tiny random "
            "model the CPU demos build (trains in seconds)"
        ),
    )
    text_2_layers: int = Field(
        2,
        ge=1,
        description="SDXL only: layers of the second text encoder.",
        json_schema_extra=ours(
            "SDXL only; the tiny random model the CPU demos build (trains in seconds)"
        ),
    )
    transformer_layers_per_block: list[int] = Field(
        [1, 1],
        min_length=1,
        description="SDXL only: transformer layers per UNet level, one per unet_channels entry "
        "(SDXL: 1, 2, 10).",
        json_schema_extra=ours(
            "SDXL only (SDXL: 1, 2, 10); the tiny random model the CPU demos build (trains in "
            "seconds)"
        ),
    )
    addition_time_embed_dim: int = Field(
        8,
        ge=1,
        description="SDXL only: width of each time-id embedding (SDXL: 256).",
        json_schema_extra=ours(
            "SDXL only (SDXL: 256); the tiny random model the CPU demos build (trains in seconds)"
        ),
    )
    extra_words: list[str] = Field(
        [],
        description="Words beyond the built-in template words that get their own token.",
        json_schema_extra=ours("none beyond the built-in template words"),
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
        "overflows in fp16, so it encodes and decodes in fp32 whatever the mixed precision. "
        "A local path must be a diffusers folder (model_index.json), else an owner/name hub id; "
        "with `tiny` it is built there, so it must lie inside the project's data/ (ours: the check "
        "refuses e.g. /etc before any work).",
        json_schema_extra=paper(
            "Experiments: Training Details: 'pre-trained Stable Diffusion V1.5'; this hub id "
            "holds the weights that train_magicapture.sh names as runwayml/stable-diffusion-v1-5"
        ),
    )
    revision: str | None = Field(
        None,
        description="Hub revision; ignored for a local folder.",
        json_schema_extra=library(
            "diffusers from_pretrained revision=None: the hub's default branch"
        ),
    )
    tiny: TinyModelConfig | None = Field(
        None,
        description="Demo only: build a tiny random SD at `pretrained` when it is missing.",
        json_schema_extra=ours(
            "real runs load real weights; only the demo envs build a tiny model"
        ),
    )
