"""Nodes of the ``evaluate`` pipeline (the paper's protocol, Experiments: Comparisons)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from magicapture_pipeline.config.generation import EvaluationConfig
from magicapture_pipeline.core.evaluation.card import concept_card
from magicapture_pipeline.core.evaluation.figures import metrics_figure
from magicapture_pipeline.core.evaluation.protocol import load_metric_models
from magicapture_pipeline.core.evaluation.scoring import evaluate, identity_loss_record
from magicapture_pipeline.core.faces.face_set import EvaluationInputs, FaceSet
from magicapture_pipeline.core.training.validation import images_by_step


def evaluate_generated(  # noqa: PLR0917 - Kedro passes node inputs positionally
    generated_images: dict[str, Any],
    postprocessed_images: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    training_set: dict[str, Any],
    concept: Any,
    stage_two: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score the generated (and post-processed) images against the accepted inputs.

    CSIM is computed against the training photos and, when preprocessing held some out, against
    the held-out photos (``<csim>_heldout``, copy check). When the concept trained with the
    identity loss (``concept.json``), the loss's network (``stage_two.identity``) is compared
    with the CSIM recognizer. See :func:`core.evaluation.scoring.evaluate`.

    Returns:
        ``metrics`` and ``per_image_metrics`` (one row per image and image set).
    """
    config = EvaluationConfig(**params)
    inputs = EvaluationInputs.from_face_set(
        FaceSet.from_catalog(training_set, face_crops, face_masks)
    )
    loss_record = identity_loss_record(concept)
    loss_on = bool(loss_record.get("enabled"))
    models = load_metric_models(config, (stage_two or {}).get("identity") if loss_on else None)
    sets = {"generated": generated_images}
    if config.score_postprocessed and postprocessed_images:
        sets["postprocessed"] = postprocessed_images
    try:
        metrics, rows = evaluate(sets, inputs, models, loss_record=loss_record,
                                 mask_face_for_style=config.mask_face_for_style)
    finally:
        models.close()
    return metrics, pd.DataFrame(rows)


def plot_metrics(per_image_metrics: pd.DataFrame) -> Any:
    """Per-image bars of every numeric metric (:func:`core.evaluation.figures.metrics_figure`)."""
    return metrics_figure(per_image_metrics)


def draw_concept_card(  # noqa: PLR0913, PLR0917 - Kedro passes node inputs positionally
    training_set: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    stage_two_validation_history: pd.DataFrame,
    stage_two_validation_images: dict[str, Any],
    metrics: dict[str, Any],
    generation: dict[str, Any],
) -> Any:
    """The concept card (:func:`core.evaluation.card.concept_card`): photos, references, the
    exported step's validation images beside the last step's, validation curves, metrics."""
    inputs = EvaluationInputs.from_face_set(
        FaceSet.from_catalog(training_set, face_crops, face_masks)
    )
    name = (generation or {}).get("concept_name", "concept")
    images = images_by_step(stage_two_validation_images or {})
    return concept_card(name, [*inputs.sources, *inputs.heldout], inputs.references, images,
                        stage_two_validation_history, metrics)  # fmt: skip
