"""The validation scorer samples the live weights through generate's sampling call and leaves
training untouched (issue 20): same weights with validation on or off, the same images for the
same weights, different images as the weights move."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import make_pair
from magicapture_pipeline.config.generation import SamplingConfig
from magicapture_pipeline.config.training import StageTwoConfig
from magicapture_pipeline.config.validation import ValidationConfig
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageTwoTrainer, TrainingExample
from magicapture_pipeline.core.training.validation import Validator
from magicapture_pipeline.core.training.validation_scoring import sampling_scorer

RES = 32
SETTINGS = {"max_steps": 4, "gradient_accumulation_steps": 1, "mixed_precision": "no",
            "hflip": False, "checkpoint_every": 0, "learning_rate": 5e-2,
            "attention": {"resolution": 4}}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tiny_sd):
    return tiny_sd(sample_size=RES)


def _examples() -> list[TrainingExample]:
    return make_pair(RES, (0, 2), (1, 4))  # an asymmetric face box


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _train(tiny_dir, validate: bool):
    config = StageTwoConfig(**SETTINGS)
    trainer = StageTwoTrainer(load_components(tiny_dir), _examples(), config)
    seen: dict[int, dict] = {}
    if validate:
        validation = ValidationConfig(every_n_steps=2, seeds=[3, 4])
        sampling = SamplingConfig(num_inference_steps=2, resolution=RES, guidance_scale=2.0)

        def evaluate(images):  # stand-in evaluator: the real one needs face models
            seen[len(seen)] = {k: _pixels(v) for k, v in images.items()}
            # loading metric models may draw from the global RNGs: training must not notice
            torch.rand(3), random.random()
            return {"csim_stub_heldout": float(len(seen))}

        scorer = sampling_scorer(trainer, validation, sampling, evaluate)
        trainer.validator = Validator(every_n_steps=2, scorer=scorer)
    trainer.train(progress=False)
    return trainer, seen


def test_validation_samples_live_weights_and_leaves_training_unchanged(tiny_dir):
    plain, _ = _train(tiny_dir, validate=False)
    checked, seen = _train(tiny_dir, validate=True)
    for name, value in plain._trainable().items():
        assert torch.equal(value, checked._trainable()[name]), name
    assert plain.history == checked.history
    assert [row["step"] for row in checked.validator.history] == [2, 4]
    first, second = seen[0], seen[1]
    assert sorted(first) == ["p00_seed3", "p00_seed4", "p01_seed3", "p01_seed4"]
    assert not np.array_equal(first["p00_seed3"], first["p00_seed4"])  # seeds differ
    assert not np.array_equal(first["p00_seed3"], second["p00_seed3"])  # weights moved
    grid = checked.validator.images[4]["grid"]
    assert grid.width == 2 * RES
    # the same weights give the same pixels: sample step 4's weights again
    states = torch.get_rng_state(), random.getstate()
    again = checked.validator.scorer(4)[1]
    # sampling and scoring (whose models may draw) leave the global RNGs as they were
    assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
    assert np.array_equal(_pixels(again["p01_seed4"]), second["p01_seed4"])
