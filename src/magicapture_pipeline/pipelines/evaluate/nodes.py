"""Nodes of the ``evaluate`` pipeline (the paper's protocol, Sec. 4.1)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from magicapture_pipeline.config.generation import EvaluationConfig
from magicapture_pipeline.core.metrics import Evaluation, evaluate_with, load_metric_models
from magicapture_pipeline.pipelines.shared import inputs_from_preprocess, materialise

logger = logging.getLogger(__name__)

POSTPROCESSED_PREFIX = "postprocessed_"


def _per_image_rows(evaluation: Evaluation, image_set: str) -> list[dict[str, Any]]:
    return [{"image": k, "image_set": image_set, **v} for k, v in evaluation.per_image.items()]


def evaluate_generated(  # noqa: PLR0917 - Kedro passes node inputs positionally
    generated_images: dict[str, Any],
    postprocessed_images: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    training_set: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score the generated (and post-processed) images against the accepted inputs.

    Returns:
        ``metrics`` (numbers at the top level, ``unavailable: {metric: reason}``, ``info``) and
        ``per_image_metrics`` (one row per image and image set).
    """
    config = EvaluationConfig(**params)
    data = inputs_from_preprocess(face_crops, face_masks, training_set)
    models = load_metric_models(config)
    sets = {"generated": generated_images}
    if config.score_postprocessed and postprocessed_images:
        sets["postprocessed"] = postprocessed_images
    metrics: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    info: dict[str, Any] = {
        "n_sources": len(data["sources"]),
        "n_references": len(data["references"]),
    }
    rows: list[dict[str, Any]] = []
    try:
        for name, images in sets.items():
            loaded = {k: materialise(v).convert("RGB") for k, v in sorted(images.items())}
            result = evaluate_with(
                models,
                loaded,
                data["sources"],
                data["references"],
                reference_masks=data["masks"],
                source_landmarks=data["landmarks"],
                mask_face_for_style=config.mask_face_for_style,
            )
            prefix = "" if name == "generated" else POSTPROCESSED_PREFIX
            metrics.update({prefix + k: v for k, v in result.metrics.items()})
            unavailable.update({prefix + k: v for k, v in result.unavailable.items()})
            info.update({prefix + k: v for k, v in result.info.items()})
            rows += _per_image_rows(result, name)
    finally:
        models.close()
    return {**metrics, "unavailable": unavailable, "info": info}, pd.DataFrame(rows)


def plot_metrics(per_image_metrics: pd.DataFrame) -> Any:
    """Per-image bars of every numeric metric, one panel per metric, one colour per image set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = per_image_metrics.copy()
    numeric = [
        c
        for c in frame.columns
        if c not in ("image", "image_set")
        and not pd.api.types.is_bool_dtype(frame[c])
        and pd.to_numeric(frame[c], errors="coerce").notna().any()
    ]
    fig, axes = plt.subplots(max(1, len(numeric)), 1, figsize=(8, 2.5 * max(1, len(numeric))))
    axes = np.atleast_1d(axes)
    if not numeric:
        axes[0].text(
            0.5,
            0.5,
            "no metric could be computed (see metrics.json 'unavailable')",
            ha="center",
            va="center",
        )
        axes[0].axis("off")
    for ax, column in zip(axes, numeric, strict=False):
        values = frame.assign(**{column: pd.to_numeric(frame[column], errors="coerce")})
        table = values.pivot_table(index="image", columns="image_set", values=column)
        table.plot.bar(ax=ax, legend=True)
        ax.set_title(column)
        ax.set_xlabel("")
    fig.tight_layout()
    return fig
