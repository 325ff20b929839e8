"""Configuration of stage two's two paper loss terms: identity (Eq. 7, ``stage_two.identity``)
and attention refocusing (Eq. 8, ``stage_two.attention``).

Defaults are the paper's or, where the paper is silent, the authors' code (the authors' value in
each field's metadata, ``authors(...)``); each ``description`` says which.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from magicapture_pipeline.config.recipes import code, ours, paper


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdentityConfig(_Strict):
    """Identity loss, Eq. 7."""

    mode: Literal["single_pass", "two_pass", "off"] = Field(
        "single_pass",
        json_schema_extra=ours(
            "one UNet pass: the x0 estimate of the training forward", authors="two_pass"
        ),
        description="single_pass = x0 from the same UNet forward (ours); two_pass = the "
        "authors' extra forward at its own t < T' with the step's noise (magicapture_train.py "
        "loss_step: add_noise(latents, noise, id_timesteps)), storing no attention maps; off.",
    )
    weight: float = Field(
        1.0,
        ge=0.0,
        json_schema_extra=paper(
            "Supplement: Training Details, Eq. 10: 'lambda_id = 1 ... is used for all "
            "experiments' (0.25 or 0.5 'are also fine')",
            authors=0.25,
        ),
        description="lambda_id (paper: 1, 0.25 or 0.5 also fine; authors' code: "
        "train_magicapture.sh --lambda_arc=0.25).",
    )
    threshold_fraction: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        json_schema_extra=code(
            "magicapture_train.py perform_tuning: loss_step(..., t_mutliplier=0.8) (the paper "
            "names T' without its value)",
            authors=0.8,
        ),
        description="Identity loss only when t < T' = fraction * T (authors' code: 0.8, "
        "t_mutliplier=0.8; paper: a threshold T' without its value).",
    )
    tasks: list[Literal["source", "composed"]] = Field(
        ["composed"],
        min_length=1,
        json_schema_extra=paper(
            "Eq. 7 on the composed prompt's samples", authors=["source", "composed"]
        ),
        description="Tasks whose micro-batches get Eq. 7 (paper: the composed prompt; authors' "
        "code: every non-style sample, i.e. source and composed, loss_step's "
        "types != 'style').",
    )
    checkpoint: str | None = Field(
        None,
        description="arcface_torch IResNet checkpoint; None = identity loss off (logged).",
        json_schema_extra=ours(
            "no ArcFace weights ship; without one Eq. 7 is off and the run records it"
        ),
    )
    arch: str = Field(
        "r100",
        description="IResNet arch of the checkpoint (official: r100).",
        json_schema_extra=code(
            "lora_diffusion_/loss_utils.py get_model('r100', fp16=True) on "
            "ms1mv3_arcface_r100_fp16 (arcface_torch IResNet r100)"
        ),
    )
    random_init: bool = Field(
        False,
        description="Tests/benchmarks only: a randomly initialised IResNet (and TAESD decoder "
        "when identity.tiny_autoencoder is null).",
        json_schema_extra=ours("tests and benchmarks only; real runs load a checkpoint"),
    )
    decoder: Literal["vae", "tiny_autoencoder"] = Field(
        "vae",
        json_schema_extra=paper(
            "Eq. 7 decodes the x0 estimate with the model's VAE", authors="vae"
        ),
        description="What decodes the x0 estimate for ArcFace: vae = the base model's VAE "
        "(paper); tiny_autoencoder = a distilled TAESD decoder (diffusers AutoencoderTiny, ~10x "
        "cheaper decode, an approximate image).",
    )
    tiny_autoencoder: str | None = Field(
        "madebyollin/taesd",
        description="Folder or hub id of the AutoencoderTiny for decoder: tiny_autoencoder (TAESD "
        "for SD 1.x, MIT licence); null = random weights (needs random_init).",
        json_schema_extra=ours(
            "TAESD for SD 1.x (MIT licence); read only with decoder: tiny_autoencoder"
        ),
    )
    decode_region: Literal["face_window", "full"] = Field(
        "full",
        json_schema_extra=paper(
            "Eq. 7: x0 = D(z0), the whole estimate decoded, then B crops the face (authors' "
            "code: magicapture_train.py loss_step decode_latents(vae, z_0))",
            authors="full",
        ),
        description="full = decode the whole x0 estimate (paper, authors' code: decode_latents "
        "of z_0); face_window = a speed option: VAE-decode only the latent window around the "
        "face ArcFace reads (core.arcface.face_latent_window; ~2x cheaper at SD size; its effect "
        "on identity is not measured).",
    )
    window_margin: int = Field(
        4,
        ge=0,
        description="Latent pixels added on each side of the face window (VAE decoder receptive "
        "field); only for decode_region: face_window.",
        json_schema_extra=ours("the VAE decoder's receptive field around the face window"),
    )
    autocast_dtype: Literal["none", "bf16", "fp16", "fp32"] = Field(
        "bf16",
        json_schema_extra=ours(
            "a speed option: bf16 keeps fp32's range without loss scaling", authors="fp32"
        ),
        description="Autocast of the identity branch only (VAE decode + ArcFace; alignment stays "
        "fp32): bf16 (ours, a speed option: fp32 range, no loss scaling; on CUDA with bf16, and "
        "on CPUs with native bf16, else off with a warning); fp16 "
        "(CUDA only, else off); fp32 = autocast off (authors' code: decode_latents runs outside "
        "their fp16 autocast, but their ArcFace, loss_utils.py get_model('r100', fp16=True), "
        "runs its body under its own fp16 autocast); none = the trainer's own mixed precision.",
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

    enabled: bool = Field(
        True,
        json_schema_extra=paper("Eq. 8, attention refocusing, is part of the method", authors=True),
        description="Use the attention refocusing loss (paper: on).",
    )
    weight: float = Field(
        2.5,
        ge=0.0,
        json_schema_extra=paper(
            "Supplement: Training Details, Eq. 10: 'lambda_attn = 2.5 is used for all "
            "experiments' (authors' code: perform_tuning attn_loss *= 2.5)",
            authors=2.5,
        ),
        description="lambda_attn (paper: 2.5; authors' code: attn_loss *= 2.5).",
    )
    resolution: int = Field(
        16,
        ge=1,
        description="Side in latent pixels (at the UNet's sample_size) of the attn2 maps read. "
        "SD 1.5 at 512 px: 16 (official: down_blocks.2 + up_blocks.1). SDXL at 1024 px (ours): "
        "32 = down_blocks.2 + up_blocks.0, the same 1/32 of the image side as SD 1.5's 16/512 and "
        "SDXL's deepest cross-attention level (its 64x64 level is 1/16 and holds 10 of 60 "
        "down/up attn2 layers).",
        json_schema_extra=code(
            "magicapture_train.py loss_step get_attentions(controller, 16, ['up', 'down'], True, "
            "bsz)"
        ),
    )
    layers: list[str] = Field(
        [],
        description="Explicit attn2 module names to read instead of `resolution` (e.g. "
        "'up_blocks.0.attentions.1.transformer_blocks.3.attn2'); empty = every down/up attn2 "
        "at `resolution`.",
        json_schema_extra=ours("empty = every down/up attn2 at `resolution`"),
    )
    scale_order: Literal["average_then_scale", "scale_then_average"] = Field(
        "average_then_scale",
        json_schema_extra=paper(
            "Eq. 8: one map A_k per token, scaled; 1/heads the capture memory",
            authors="scale_then_average",
        ),
        description="Eq. 8 min-max scaling (min/max held constant either way): average the "
        "head/layer maps then scale (paper: one map A_k per token; 1/heads the capture memory) "
        "or scale each map then average (authors' code, magicapture_train.py loss_step).",
    )
