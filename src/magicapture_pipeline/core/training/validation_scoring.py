"""The validation scorer: sample the trainer's current weights through ``generate``'s sampling
call (:func:`core.generation.sampling.sample_image`) and score them with a given evaluator.

The pipeline wraps the trainer's own modules (the UNet with its LoRA, the text encoder(s) with the
current [V1]/[V2] rows), so nothing is copied or exported to validate. Every RNG state training
draws from is restored afterwards: a run with validation on trains to the same weights as one
with it off (``tests/core/training/test_validation_scoring.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image

from magicapture_pipeline.core.generation.sampling import make_grid, sample_image, set_scheduler
from magicapture_pipeline.core.models.loading import SDXL

Evaluator = Callable[[Mapping[str, Image.Image]], dict[str, Any]]


def pipeline_from_trainer(trainer: Any, scheduler: str) -> Any:
    """A diffusers pipeline over ``trainer``'s modules with the named sampler."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = trainer.components
    common = {"vae": trainer.vae, "text_encoder": trainer.text_encoder,
              "tokenizer": parts.tokenizer, "unet": trainer.unet,
              "scheduler": parts.noise_scheduler}  # fmt: skip
    if trainer.family == SDXL:
        pipe = StableDiffusionXLPipeline(
            text_encoder_2=trainer.text_encoder_2, tokenizer_2=parts.tokenizer_2, **common
        )
    else:
        pipe = StableDiffusionPipeline(
            safety_checker=None, feature_extractor=None, requires_safety_checker=False, **common
        )
    set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampling_scorer(
    trainer: Any,
    validation: Any,
    sampling: Any,
    evaluate: Evaluator,
) -> Callable[[int], tuple[dict[str, Any], dict[str, Image.Image]]]:
    """``scorer(step) -> (metrics, {"grid": contact sheet, key: image})`` for a ``Validator``.

    Args:
        trainer: a ``_Trainer``.
        validation: its ``ValidationConfig`` (prompts, seeds).
        sampling: the generation settings (``GenerationConfig``: scheduler, steps, guidance,
            resolution, negative prompt).
        evaluate: ``{key: image} -> metrics`` (the evaluation protocol on the face set).
    """
    v1, v2 = trainer.tokens
    prompts = [p.format(v1=v1, v2=v2) for p in validation.prompts]

    def scorer(step: int) -> tuple[dict[str, Any], dict[str, Image.Image]]:
        states = (torch.get_rng_state(), random.getstate(), trainer.generator.get_state())
        modules = [m for m in (trainer.unet, trainer.text_encoder, trainer.text_encoder_2) if m]
        modes = [m.training for m in modules]
        try:
            for module in modules:
                module.eval()
            pipe = pipeline_from_trainer(trainer, sampling.scheduler)
            images: dict[str, Image.Image] = {}
            for p, prompt in enumerate(prompts):
                for seed in validation.seeds:
                    images[f"p{p:02d}_seed{seed}"] = sample_image(
                        pipe, prompt, seed=seed,
                        num_inference_steps=sampling.num_inference_steps,
                        guidance_scale=sampling.guidance_scale,
                        resolution=sampling.resolution,
                        negative_prompt=sampling.negative_prompt,
                    )  # fmt: skip
        finally:
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            trainer.generator.set_state(states[2])
        metrics = dict(evaluate(images))
        grid = make_grid(list(images.values()), labels=list(images), columns=len(validation.seeds))
        return metrics, {"grid": grid, **images}

    return scorer
