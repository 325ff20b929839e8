"""Nodes of the ``train_stage_one`` pipeline: the base model and the embedding-only stage."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from PIL import Image
from torch import Tensor

from magicapture_pipeline.config.model import ModelConfig
from magicapture_pipeline.config.training import StageOneConfig
from magicapture_pipeline.core import training
from magicapture_pipeline.core.models import builders
from magicapture_pipeline.core.models.families import embeddings_to_tensors
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training.figures import loss_curves_figure
from magicapture_pipeline.core.training.validation import validation_outputs
from magicapture_pipeline.pipelines.shared import stage_validation, validation_history_frame

logger = logging.getLogger(__name__)


def prepare_base_model(params: dict[str, Any], training_set: dict[str, Any]) -> dict[str, Any]:
    """Make sure the base model loads; in the demos build the tiny random SD / SDXL first if
    missing (:func:`core.models.builders.prepare_base_model`).

    ``training_set`` (the accepted photos) is an input so that the model is loaded only once the
    photos have passed validation: a rejected photo fails the run in seconds, before a load of
    several GB at real size (Kedro orders nodes by their data, not by their place in the file).

    Returns:
        ``base_model``: ``{"path", "tiny", "revision", "built", "family"}``.
    """
    config = ModelConfig(**params)
    examples = len(training_set.get("items", []))
    logger.info("Preparing the base model for %d accepted training images", examples)
    return builders.prepare_base_model(config.pretrained, config.tiny, config.revision)


def train_stage_one(  # noqa: PLR0913, PLR0917 (Kedro passes node inputs positionally)
    base_model: dict[str, Any],
    training_set: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    params: dict[str, Any],
    generation: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[dict[str, Tensor], pd.DataFrame, pd.DataFrame, dict[str, Image.Image]]:
    """Learn the [V1]/[V2] embeddings with the masked reconstruction loss (Eq. 4-5), validating
    every ``stage_one.validation.every_n_steps`` with ``generate``'s sampling settings
    (``params:generation``) and the ``evaluate`` protocol (``params:evaluation``).

    Returns:
        ``stage_one_embeddings`` (``{token: tensor}``; SDXL ``{"clip_l/<token>": tensor, ...}``,
        ``core.families.embeddings_to_tensors``; the best validated step's when
        ``validation.export`` is ``best``), ``stage_one_history``,
        ``stage_one_validation_history`` (one row per validation, the exported step marked) and
        ``stage_one_validation_images`` (``{"step_<n>/<name>": image}``).
    """
    config = StageOneConfig(**params)
    setup = stage_validation("stage_one", config.validation, training_set, face_crops,
                             face_masks, generation, evaluation)  # fmt: skip
    components = load_components(base_model["path"], revision=base_model.get("revision"))
    examples = training.examples_from_training_set(training_set, face_crops, face_masks)
    try:
        result = training.train_stage_one(components, examples, config, validator=setup.factory)
    finally:
        setup.close()
    rows, images = validation_outputs(setup.validator, result.metadata)
    return (
        embeddings_to_tensors(result.embeddings),
        pd.DataFrame(result.history),
        validation_history_frame(rows),
        images,
    )


def plot_stage_one_losses(history: pd.DataFrame) -> Image.Image:
    """Loss curves of stage one (raw and running mean) for a person to look at."""
    return loss_curves_figure(history, "stage one: loss terms per optimiser step")
