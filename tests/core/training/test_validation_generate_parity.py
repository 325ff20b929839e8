"""A validation image is what ``generate`` draws from that step's export (issue 20): the scorer
samples at ``generate``'s LoRA scales (``SamplingConfig.lora_scale_unet`` / ``_text_encoder``),
not at the training scale 1.0, and restores the LoRA scaling exactly afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magicapture_pipeline.config.generation import SamplingConfig
from magicapture_pipeline.config.training import StageTwoConfig
from magicapture_pipeline.config.validation import ValidationConfig
from magicapture_pipeline.core.generation.export import export
from magicapture_pipeline.core.generation.sampling import prepare_pipeline, sample_image
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageTwoTrainer
from magicapture_pipeline.core.training.validation_scoring import lora_scaled, sampling_scorer

RES = 32
# official preset: LoRA on the UNet and the text encoder, so both scales are exercised
SETTINGS = {"max_steps": 3, "gradient_accumulation_steps": 1, "mixed_precision": "no",
            "hflip": False, "checkpoint_every": 0, "learning_rate": 5e-2,
            "lora": {"preset": "official", "alpha": 8, "text_encoder_learning_rate": 5e-2},
            "attention": {"resolution": 4}}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tiny_sd):
    return tiny_sd(sample_size=RES)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _scorer_image(trainer, sampling: SamplingConfig):
    validation = ValidationConfig(every_n_steps=1, prompts=["a photo of a {v1} person"], seeds=[7])
    scorer = sampling_scorer(trainer, validation, sampling, lambda images: {})
    return scorer(trainer.global_step)[1]["p00_seed7"]


def test_validation_samples_what_generate_draws_from_the_export(tiny_dir, tmp_path):
    from magicapture_pipeline.core.training.examples import TrainingExample

    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, RES // 8, RES // 8)
    mask[:, 0:2, 1:4] = 1.0
    examples = [
        TrainingExample(f"{role}0", role, torch.rand(3, RES, RES, generator=generator) * 2 - 1,
                        mask.clone(), None)
        for role in ("source", "reference")
    ]  # fmt: skip
    trainer = StageTwoTrainer(load_components(tiny_dir), examples, StageTwoConfig(**SETTINGS))
    trainer.train(progress=False)
    sampling = SamplingConfig(num_inference_steps=3, resolution=RES, guidance_scale=3.0,
                              device="cpu", dtype="float32")  # fmt: skip
    scaled = _scorer_image(trainer, sampling)
    full = _scorer_image(trainer, sampling.model_copy(update={"lora_scale_unet": 1.0,
                                                              "lora_scale_text_encoder": 1.0}))
    before = {id(m): dict(m.scaling) for m in trainer.unet.modules() if hasattr(m, "scaling")}
    assert before and all(v == {"default": 8 / 4} for v in before.values())  # alpha / rank

    result = trainer.result(str(tiny_dir), RES)
    export(tmp_path / "concept", result.embeddings, result.unet_lora, result.text_encoder_lora,
           result.metadata)  # fmt: skip
    pipe, _ = prepare_pipeline(tiny_dir, tmp_path / "concept", sampling)
    drawn = sample_image(pipe, "a photo of a <v1> person", seed=7,
                         num_inference_steps=3, guidance_scale=3.0, resolution=RES)  # fmt: skip
    # the same picture up to float rounding (folded alpha / rank, peft vs diffusers layers) ...
    assert np.abs(_pixels(scaled) - _pixels(drawn)).max() <= 2
    # ... and a different one at the training scale 1.0
    assert np.abs(_pixels(full) - _pixels(drawn)).max() > 10


def test_lora_scaled_restores_the_exact_scaling(tiny_dir):
    from peft import LoraConfig

    unet = load_components(tiny_dir).unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=3, target_modules=["to_q", "to_v"]))
    layers = [m for m in unet.modules() if hasattr(m, "scaling") and m.scaling]
    before = [dict(m.scaling) for m in layers]
    with lora_scaled([(unet, 0.6), (None, 0.9)]) as count:
        assert count == len(layers) > 0
        assert all(m.scaling["default"] == pytest.approx(0.75 * 0.6) for m in layers)
    assert [dict(m.scaling) for m in layers] == before
