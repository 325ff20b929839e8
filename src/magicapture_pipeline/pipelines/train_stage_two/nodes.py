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


def train_stage_two(  # noqa: PLR0917 (Kedro passes node inputs positionally)
    base_model: dict[str, Any],
    stage_one_embeddings: dict[str, Tensor],
    training_set: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    params: dict[str, Any],
) -> tuple[training.TrainingResult, pd.DataFrame, dict[str, Image.Image]]:
    """Train LoRA + embeddings on the source, reference and composed tasks (Eq. 4-8).

    Returns:
        ``concept`` (exported by the concept dataset), ``stage_two_history`` and
        ``attention_heatmaps`` (``{"step_<n>": figure}``).
    """
    result = training.train_stage_two(
        load_components(base_model["path"], revision=base_model.get("revision")),
        training.examples_from_training_set(training_set, face_crops, face_masks),
        StageTwoConfig(**params),
        embeddings_from_tensors(stage_one_embeddings),
        base_model=base_model["path"],
        resolution=training_set.get("resolution"),
    )
    return result, pd.DataFrame(result.history), result.heatmaps


def plot_stage_two_losses(history: pd.DataFrame) -> Image.Image:
    """Loss curves of stage two (raw and running mean) for a person to look at."""
    return loss_curves_figure(history, "stage two: loss terms per optimiser step")
