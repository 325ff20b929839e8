"""What training adds to the model: the placeholder tokens [V1]/[V2] (``stage_one.tokens``,
``stage_two.tokens``) and stage two's LoRA adapters (``stage_two.lora``).

Each field's metadata names the source of its default and, where the authors' code differs, their
value (``config/recipes.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from magicapture_pipeline.config.recipes import AUTHORS_SCALE_LR, code, ours, paper


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokensConfig(_Strict):
    """Placeholder tokens [V1] (person) and [V2] (style)."""

    person: str = Field(
        "<v1>",
        description="Text of [V1], the person token.",
        json_schema_extra=ours("a new token text for the paper's [V1]; any unused text works"),
    )
    style: str = Field(
        "<v2>",
        description="Text of [V2], the style token.",
        json_schema_extra=ours("a new token text for the paper's [V2]; any unused text works"),
    )
    person_init: str = Field(
        "person",
        json_schema_extra=code(
            "train_magicapture.sh --initializer_tokens=person", authors="person"
        ),
        description="Word whose embedding initialises [V1], or 'random' (authors' code: "
        "train_magicapture.sh --initializer_tokens=person; paper: not stated).",
    )
    style_init: str = Field(
        "painting",
        json_schema_extra=ours("'painting', the reference template's word", authors="random"),
        description="Word whose embedding initialises [V2], or 'random' = N(0, random_std^2) "
        "(authors' code: random, magicapture_train.py train() initializer_tokens_style "
        "'<rand-0.017>'; paper: not stated; ours: 'painting', the reference template's word).",
    )
    random_std: float = Field(
        0.017,
        gt=0.0,
        json_schema_extra=code(
            "magicapture_train.py train() initializer_tokens_style '<rand-0.017>'", authors=0.017
        ),
        description="Std of a 'random' initialisation (authors' code: '<rand-0.017>').",
    )


class LoraConfigModel(_Strict):
    """LoRA adapters of stage two."""

    rank: int = Field(
        4,
        ge=1,
        le=256,
        json_schema_extra=code("train_magicapture.sh --lora_rank=4", authors=4),
        description="LoRA rank (authors' code: --lora_rank=4; paper: not stated). At most 256 "
        "(ours: 64x the authors' value; the adapter grows linearly with the rank, and at 256 it "
        "is already about as large as the attention weights it adapts).",
    )
    alpha: float = Field(
        4.0,
        gt=0.0,
        json_schema_extra=code(
            "magicapture_train.py train(lora_scale=1.0) -> inject_trainable_lora(scale=...): "
            "lora_diffusion_/lora.py LoraInjectedLinear adds lora_up(lora_down(x)) * scale, i.e. "
            "peft's alpha / rank = 1, alpha = rank = 4 (--lora_rank=4)",
            authors=4.0,
        ),
        description="LoRA alpha; peft scales the adapter by alpha / rank (authors' code: scale 1,"
        " i.e. alpha = rank; diffusers' LoRA scripts also use alpha = rank).",
    )
    preset: Literal["paper", "official", "custom_diffusion"] = Field(
        "paper",
        json_schema_extra=paper(
            "Method: Two-phase Optimization: LoRA (Eq. 3) on 'the projection layers in the "
            "cross-attention module' only, i.e. the UNet's attn2 q/k/v/out",
            authors="official",
        ),
        description="paper = UNet cross-attention q/k/v/out (64 modules on SD 1.5); official = "
        "UNet self- and cross-attention q/k/v/out and ff.net.0.proj (144; authors' code: "
        "target_replace_module {CrossAttention, Attention, GEGLU}) plus the text encoder's "
        "attention q/k/v/out (CLIPAttention); custom_diffusion = cross-attention k/v only (the "
        "Custom Diffusion baseline, as LoRA).",
    )
    text_encoder_learning_rate: float = Field(
        1e-5,
        gt=0.0,
        json_schema_extra=code(
            "train_magicapture.sh --learning_rate_text=1e-5 (read only by the official preset)",
            authors=1e-5 * AUTHORS_SCALE_LR,
        ),
        description="lr of the text-encoder LoRA (official preset only; authors' code: "
        "--learning_rate_text=1e-5, x --scale_lr 4 = 4e-5 in the official recipe; paper: no "
        "text-encoder LoRA).",
    )
    init: Literal["gaussian", "default"] = Field(
        "gaussian",
        json_schema_extra=code(
            "lora_diffusion_/lora.py LoraInjectedLinear: nn.init.normal_(lora_down.weight, std=1 /"
            " r), lora_up zero",
            authors="gaussian",
        ),
        description="peft init_lora_weights of A (B is zero either way, so the output starts "
        "unchanged): gaussian = N(0, (1/rank)^2), std 0.25 at rank 4 (authors' code: "
        "lora_diffusion_/lora.py LoraInjectedLinear, nn.init.normal_(lora_down.weight, "
        "std=1 / r), lora_up zero; paper: not stated, so both recipes follow the authors); "
        "default = peft's kaiming-uniform A (std 1/sqrt(3 fan_in), 8-15x smaller at SD 1.5's "
        "widths).",
    )
