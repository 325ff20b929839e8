"""The work of one validation during training (issue 20) against the stage-two work between two.

A validation (``core.training.validation_scoring``) samples ``len(prompts) x len(seeds)`` images
through generate's sampling (``generation.num_inference_steps`` UNet forwards with CFG, then the
VAE decode: :func:`.flops.count_generation`) and scores each: ArcFace on its face and the CLIP
ViT-L/14 image tower for the style similarity (counted here on the meta device). Not counted:
face detection (mediapipe, CPU), embedding the held-out and reference photos (the same at every
validation), the evaluator's elementwise work. With ``every_n_steps`` 0 (validation off, the base
default) the ratio is given per :data:`PER_STEPS_WHEN_OFF` optimiser steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from magicapture_pipeline.speed_bench import meta_step as ms

PER_STEPS_WHEN_OFF = 100
# openai/clip-vit-large-patch14's vision tower (its config.json), the evaluation protocol's CLIP
CLIP_L14_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
                   "projection_dim": 768}  # fmt: skip


def scoring_flops(model: ms.MetaModel) -> int:
    """FLOPs of scoring one generated image: ArcFace on a 112 px face + CLIP ViT-L/14 at 224."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with ms.META:
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_L14_VISION)).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.arcface(torch.empty(1, 3, 112, 112, device=ms.META, dtype=model.dtype))
        clip(pixel_values=torch.empty(1, 3, 224, 224, device=ms.META))
    return counter.get_total_flops()


def validation_cost(
    model: ms.MetaModel, generation_one_image: int, customization: dict[str, Any]
) -> dict[str, Any]:
    """One validation's FLOPs (default ``stage_two.validation``) and its ratio to the stage-two
    work of ``every_n_steps`` optimiser steps (``customization``: :func:`.flops.customization`
    of the recipe, whose stage-two FLOPs are spread evenly over its steps)."""
    from magicapture_pipeline.config.training import StageTwoConfig

    stage_two = StageTwoConfig()
    validation = stage_two.validation
    images = len(validation.prompts) * len(validation.seeds)
    score = scoring_flops(model)
    one = images * (generation_one_image + score)
    steps = validation.every_n_steps or PER_STEPS_WHEN_OFF
    between = customization["flops"]["stage_two"] / stage_two.max_steps * steps
    return {
        "images": images,
        "scoring_one_image_flops": score,
        "validation_flops": one,
        "every_n_steps": validation.every_n_steps,
        "steps_compared": steps,
        "stage_two_flops_between": between,
        "validation_over_training": one / between,
    }
