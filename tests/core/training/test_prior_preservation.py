"""DreamBooth's prior preservation in the DreamBooth-LoRA row's trainer (issue 18 §2): every
micro-step adds ``prior_loss_weight`` x the plain MSE of one class image under the class prompt
to stage two's instance loss, as diffusers' train_dreambooth_lora.py does.

Each test names the break it was seen to catch (introduced by hand once, then restored).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import RES, make_examples
from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.config.training import StageTwoConfig
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training.prior import PriorPreservationTrainer

CLASS_PROMPT = "a photo of a person"


def class_images(count: int = 3) -> list[torch.Tensor]:
    """Class images unlike the instance examples (constant planes, one level per image), so the
    one a step encodes can be told from every instance image."""
    return [torch.full((3, RES, RES), -0.9 + 0.5 * i) for i in range(count)]


def prior_trainer(tiny_dir, weight: float, **overrides: Any) -> PriorPreservationTrainer:
    values: dict[str, Any] = {
        "max_steps": 2,
        "gradient_accumulation_steps": 1,
        "mixed_precision": "no",
        "heatmap_every": 0,
        "hflip": False,
        "task_weights": [1.0, 1.0, 0.0],
        "attention": AttentionConfig(enabled=False, resolution=8),
        "identity": IdentityConfig(mode="off"),
        "seed": 7,
    }
    return PriorPreservationTrainer(
        load_components(tiny_dir),
        make_examples(),
        StageTwoConfig(**{**values, **overrides}),
        class_images=class_images(),
        class_prompt=CLASS_PROMPT,
        prior_loss_weight=weight,
    )


def _record_calls(model: PriorPreservationTrainer) -> tuple[list[str], list[torch.Tensor]]:
    prompts: list[str] = []
    images: list[torch.Tensor] = []
    encode_prompt, encode_image = model._encode_prompt, model._encode
    model._encode_prompt = lambda prompt: prompts.append(prompt) or encode_prompt(prompt)
    model._encode = lambda image: images.append(image.clone()) or encode_image(image)
    return prompts, images


def test_prior_loss_is_added_per_step_with_its_weight(tiny_dir):
    """Same seed, weights 0 and 2.5: the class term is the same, and the totals differ by exactly
    2.5 x it. Breaks caught: the prior term not added to the total (``total`` returned without
    it), and added unweighted (``total + prior``)."""
    totals, priors = {}, {}
    for weight in (0.0, 2.5):
        model = prior_trainer(tiny_dir, weight)
        with torch.no_grad():
            total, terms, _ = model._micro_step()
        totals[weight], priors[weight] = float(total), terms["loss_prior"]
        assert terms["loss"] == pytest.approx(float(total))
        model.close()
    assert priors[0.0] == pytest.approx(priors[2.5], rel=1e-6)
    assert totals[2.5] - totals[0.0] == pytest.approx(2.5 * priors[2.5], rel=1e-4)
    assert priors[2.5] > 1e-3  # the class forward is a real denoising error, not a zero term


def test_each_step_pairs_one_instance_with_one_class_example(tiny_dir):
    """One micro-step encodes two prompts, the instance template then the class prompt, and two
    images, an instance image then one of the class images. Breaks caught: the class forward
    reusing the instance prompt (``_encode_prompt(self._prompt(task))``) and the class example
    drawn from the instance variants (``self._sample_variant("source")``)."""
    model = prior_trainer(tiny_dir, 1.0, cache_latents=False)  # every step encodes its images
    prompts, images = _record_calls(model)
    with torch.no_grad():
        model._micro_step()
    model.close()
    assert len(prompts) == 2 and len(images) == 2
    assert "<v1>" in prompts[0] or "<v2>" in prompts[0]
    assert prompts[1] == CLASS_PROMPT
    instance = [example.image for example in make_examples()]
    assert any(torch.equal(images[0], image) for image in instance)
    assert any(torch.equal(images[1], image) for image in class_images())


def test_prior_training_moves_the_lora_and_records_the_prior(tiny_dir):
    """Two optimiser steps: the history carries ``loss_prior`` per step and the result's metadata
    the prior's prompt, count and weight. Break caught: ``result`` not recording the prior."""
    model = prior_trainer(tiny_dir, 1.0)
    history = model.train(progress=False)
    result = model.result()
    assert [("loss_prior" in row) for row in history] == [True, True]
    assert result.metadata["prior_preservation"] == {
        "class_prompt": CLASS_PROMPT,
        "num_class_images": 3,
        "prior_loss_weight": 1.0,
    }


def test_no_class_images_is_refused(tiny_dir):
    with pytest.raises(ValueError, match="at least one class image"):
        PriorPreservationTrainer(
            load_components(tiny_dir),
            make_examples(),
            StageTwoConfig(max_steps=1, mixed_precision="no"),
            class_images=[],
            class_prompt=CLASS_PROMPT,
            prior_loss_weight=1.0,
        )
