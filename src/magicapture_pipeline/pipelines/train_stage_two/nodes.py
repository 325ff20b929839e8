"""Node of the ``train_stage_two`` pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd
from PIL import Image
from torch import Tensor

from magicapture_pipeline.config.training import StageTwoConfig
from magicapture_pipeline.core import training
from magicapture_pipeline.core.models.families import embeddings_from_tensors
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training.figures import loss_curves_figure
from magicapture_pipeline.core.training.validation import validation_outputs
from magicapture_pipeline.pipelines.shared import stage_validation, validation_history_frame


def train_stage_two(  # noqa: PLR0913, PLR0917 (Kedro passes node inputs positionally)
    base_model: dict[str, Any],
    stage_one_embeddings: dict[str, Tensor],
    training_set: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    params: dict[str, Any],
    generation: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[
    training.TrainingResult, pd.DataFrame, dict[str, Image.Image], pd.DataFrame, dict[str, Any]
]:
    """Train LoRA + embeddings on the source, reference and composed tasks (Eq. 4-8),
    validating every ``stage_two.validation.every_n_steps`` with ``generate``'s sampling settings
    (``params:generation``, its LoRA scales included) and the ``evaluate`` protocol
    (``params:evaluation``).

    Returns:
        ``concept`` (exported by the concept dataset; the best validated step's weights when
        ``validation.export`` is ``best``; ``concept.json`` records ``exported_step`` and
        ``export_reason``), ``stage_two_history``, ``attention_heatmaps``
        (``{"step_<n>": figure}``), ``stage_two_validation_history`` and
        ``stage_two_validation_images`` (``{"step_<n>/<name>": image}``).
    """
    config = StageTwoConfig(**params)
    setup = stage_validation("stage_two", config.validation, training_set, face_crops,
                             face_masks, generation, evaluation)  # fmt: skip
    try:
        result = training.train_stage_two(
            load_components(base_model["path"], revision=base_model.get("revision")),
            training.examples_from_training_set(training_set, face_crops, face_masks),
            config,
            embeddings_from_tensors(stage_one_embeddings),
            base_model=base_model["path"],
            resolution=training_set.get("resolution"),
            validator=setup.factory,
        )
    finally:
        setup.close()
    rows, images = validation_outputs(setup.validator, result.metadata)
    history = pd.DataFrame(result.history)
    return result, history, result.heatmaps, validation_history_frame(rows), images


def plot_stage_two_losses(history: pd.DataFrame) -> Image.Image:
    """Loss curves of stage two (raw and running mean) for a person to look at."""
    return loss_curves_figure(history, "stage two: loss terms per optimiser step")
