"""What each benchmark row is: its method note, whether it trains masked, how it samples
(issue 18 §2: baselines as their papers train and sample, as far as LoRA allows)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from magicapture_pipeline.config.benchmark import VariantConfig
from magicapture_pipeline.config.generation import GenerationConfig

__all__ = [
    "BASELINES",
    "BASELINE_LORA_SCALE",
    "METHOD_NOTES",
    "trains_masked",
    "variant_generation",
    "whole_image_examples",
]

# What each baseline is, in terms of this project's trainers (stated in the results).
METHOD_NOTES = {
    "magicapture": "stage one + stage two (core.training), exported with core.concept.export",
    "textual_inversion": "embeddings only: the stage-one trainer on the whole image (plain, "
    "unmasked reconstruction) at the paper's TI settings; no LoRA",
    "dreambooth_lora": "DreamBooth as a rank-4 LoRA, NOT the paper's DreamBooth (full UNet + text "
    "encoder fine-tune, lr 1e-6): the stage-two trainer on the whole image (unmasked) without "
    "stage one, composed prompts, identity or attention losses, a frozen rare-token "
    "identifier, sampled at full LoRA strength, with DreamBooth's prior preservation (class "
    "images of the base model, core.evaluation.dreambooth; prior loss per step)",
    "custom_diffusion_lora": "Custom Diffusion as a rank-4 LoRA on cross-attention k/v plus "
    "modifier tokens initialised from Custom Diffusion's rare tokens, NOT the paper's Custom "
    "Diffusion (full k/v fine-tune, lr 5e-6): whole-image (unmasked) reconstruction, at a LoRA "
    "learning rate, sampled at full LoRA strength",
}

# Baselines sample at full LoRA strength (their papers apply the whole fine-tune) and train on the
# whole image (their papers know no face masks); MagiCapture rows keep params:generation's scales
# and the masked losses (issue 18 §2).
BASELINES = ("textual_inversion", "dreambooth_lora", "custom_diffusion_lora")
BASELINE_LORA_SCALE = 1.0


def trains_masked(variant: VariantConfig) -> bool:
    """Whether the row trains on MagiCapture's masked reconstruction (Eq. 4-6)."""
    if variant.masked_losses is not None:
        return variant.masked_losses
    return variant.method not in BASELINES


def whole_image_examples(examples: list[Any]) -> list[Any]:
    """The examples with loss regions covering the whole image for every role: a source's region
    is its face mask, a reference's the complement (``core.training.loop.region_mask``), so the
    mask becomes all ones for sources and all zeros for references."""
    out = []
    for example in examples:
        fill = 1.0 if example.role == "source" else 0.0
        out.append(
            replace(example, face_mask=example.face_mask.new_full(example.face_mask.shape, fill))
        )
    return out


def variant_generation(
    generation: GenerationConfig, variant: VariantConfig, steps_fixed: bool = False
) -> GenerationConfig:
    """The sampling settings of one row: the row's CFG / steps over ``generation``'s.

    ``steps_fixed``: the benchmark already set every row's steps (a demo budget); the row's own
    ``num_inference_steps`` then yields.
    """
    updates: dict[str, Any] = {}
    scale = variant.lora_scale
    if scale is None and variant.method in BASELINES:
        scale = BASELINE_LORA_SCALE
    if scale is not None:
        updates["lora_scale_unet"] = updates["lora_scale_text_encoder"] = scale
    if variant.guidance_scale is not None:
        updates["guidance_scale"] = variant.guidance_scale
    if variant.num_inference_steps is not None and not steps_fixed:
        updates["num_inference_steps"] = variant.num_inference_steps
    return generation.model_copy(update=updates)
