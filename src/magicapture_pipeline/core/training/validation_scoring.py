"""The validation scorer: sample the trainer's current weights through ``generate``'s sampling
call (:func:`core.generation.sampling.sample_image`) and score them with a given evaluator.

The pipeline wraps the trainer's own modules (the UNet with its LoRA, the text encoder(s) with the
current [V1]/[V2] rows), so nothing is copied or exported to validate. The LoRA samples at
``generate``'s scales (``SamplingConfig.lora_scale_unet`` / ``lora_scale_text_encoder``, the
official 0.6 / 0.9), so a validation image is what ``generate`` would draw from that step's
export. Every RNG state training draws from is restored afterwards: a run with validation on
trains to the same weights as one with it off (``tests/core/training/test_validation_scoring.py``).

:func:`validation_setup` builds what the training nodes pass to the trainers: the factory of the
stage's :class:`~.validation.Validator` with the evaluation protocol as its evaluator.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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


@contextlib.contextmanager
def lora_scaled(scales: Sequence[tuple[Any, float]]) -> Iterator[int]:
    """Multiply every peft LoRA layer's scaling in each ``(module, scale)`` by ``scale`` (as
    diffusers' ``set_adapters`` does for a loaded concept), restoring the exact values after.
    Yields the number of LoRA layers scaled (0 for stage one: no LoRA)."""
    from peft.tuners.lora import LoraLayer

    saved: list[tuple[Any, dict[str, float]]] = []
    for module, scale in scales:
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, LoraLayer):
                saved.append((layer, dict(layer.scaling)))
                for name in layer.scaling:
                    layer.scaling[name] = layer.scaling[name] * scale
    try:
        yield len(saved)
    finally:
        for layer, scaling in saved:
            layer.scaling.clear()
            layer.scaling.update(scaling)


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
            resolution, negative prompt, LoRA scales).
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
            text = sampling.lora_scale_text_encoder
            scales = [(trainer.unet, sampling.lora_scale_unet), (trainer.text_encoder, text),
                      (trainer.text_encoder_2, text)]  # fmt: skip
            with lora_scaled(scales):
                for p, prompt in enumerate(prompts):
                    for seed in validation.seeds:
                        images[f"p{p:02d}_seed{seed}"] = sample_image(
                            pipe, prompt, seed=seed,
                            num_inference_steps=sampling.num_inference_steps,
                            guidance_scale=sampling.guidance_scale,
                            resolution=sampling.resolution,
                            negative_prompt=sampling.negative_prompt,
                        )  # fmt: skip
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
            metrics = dict(evaluate(images))  # its models may draw: restored below
        finally:
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            trainer.generator.set_state(states[2])
        grid = make_grid(list(images.values()), labels=list(images), columns=len(validation.seeds))
        return metrics, {"grid": grid, **images}

    return scorer


@dataclass
class ValidationSetup:
    """What a training node hands its stage: ``factory(trainer) -> Validator`` (None when
    validation is off), the built validator afterwards, and the metric models to release.

    The metric models (face analysis, recognizer, CLIP) load at the first validation, not before,
    and :meth:`close` releases them.
    """

    validation: Any
    sampling: Any
    evaluation: Any
    inputs: Any
    stage: str
    validator: Any = None
    _models: Any = field(default=None, repr=False)

    @property
    def factory(self) -> Callable[[Any], Any] | None:
        return self._build if self.validation.every_n_steps > 0 else None

    def _build(self, trainer: Any) -> Any:
        from magicapture_pipeline.core.training.validation import Objective, Validator

        v = self.validation
        objective = Objective(metric=v.objective, style_metric=v.style_metric,
                              style_fraction=v.style_fraction, copy_metric=v.copy_metric,
                              copy_limit=v.copy_limit)  # fmt: skip
        scorer = sampling_scorer(trainer, v, self.sampling, self._evaluate)
        self.validator = Validator(v.every_n_steps, scorer, objective, v.patience, self.stage)
        return self.validator

    def _evaluate(self, images: Mapping[str, Image.Image]) -> dict[str, Any]:
        from magicapture_pipeline.core.evaluation.protocol import load_metric_models
        from magicapture_pipeline.core.evaluation.scoring import score_images

        if self._models is None:
            self._models = load_metric_models(self.evaluation)
        result = score_images(self._models, images, self.inputs,
                              self.evaluation.mask_face_for_style)  # fmt: skip
        return dict(result.metrics)

    def close(self) -> None:
        if self._models is not None:
            self._models.close()
            self._models = None


def validation_setup(
    validation: Any, sampling: Any, evaluation: Any, inputs: Any, stage: str
) -> ValidationSetup:
    """The stage's validation (``ValidationConfig``) sampled as ``sampling`` (the generate
    settings) says and scored by the evaluation protocol (``EvaluationConfig``) against
    ``inputs`` (``EvaluationInputs`` of the face set).

    Raises:
        ValueError: the objective is a held-out metric but the face set holds no photo out
            (fewer accepted source photos than ``preprocess.heldout_min_sources``).
    """
    if validation.every_n_steps > 0 and "heldout" in validation.objective and not inputs.heldout:
        raise ValueError(
            f"{stage}.validation.objective {validation.objective!r} needs a held-out source "
            f"photo, but preprocessing held none out ({len(inputs.sources)} accepted source "
            "photos; preprocess.heldout_min_sources decides): add photos, or choose another "
            "objective (e.g. csim_*), or set validation.every_n_steps: 0"
        )
    return ValidationSetup(validation, sampling, evaluation, inputs, stage)
