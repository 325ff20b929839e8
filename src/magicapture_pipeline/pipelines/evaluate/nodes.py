"""Nodes of the ``evaluate`` pipeline (the paper's protocol, Sec. 4.1)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from magicapture_pipeline.config.generation import EvaluationConfig
from magicapture_pipeline.core.evaluation.protocol import (
    Evaluation,
    evaluate_with,
    load_metric_models,
)
from magicapture_pipeline.pipelines.shared import inputs_from_preprocess, materialise

logger = logging.getLogger(__name__)

POSTPROCESSED_PREFIX = "postprocessed_"


def _per_image_rows(evaluation: Evaluation, image_set: str) -> list[dict[str, Any]]:
    return [{"image": k, "image_set": image_set, **v} for k, v in evaluation.per_image.items()]


def _identity_loss_record(concept: Any) -> dict[str, Any]:
    """``concept.json``'s ``identity_loss`` entry, whatever form the concept input takes."""
    if isinstance(concept, dict) and "identity_loss" in concept:
        return dict(concept["identity_loss"] or {})
    folder = concept.get("path") if isinstance(concept, dict) else concept
    path = Path(str(folder)) / "concept.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("identity_loss") or {})


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
    the held-out photos (``<csim>_heldout``, copy check). ``identity_loss_trained`` (1 / 0) says
    whether the concept trained with the identity loss (Eq. 7), read from ``concept.json``; when
    it did, the loss's network (``stage_two.identity``) is compared with the CSIM recognizer.

    Returns:
        ``metrics`` (numbers at the top level, ``unavailable: {metric: reason}``, ``info``) and
        ``per_image_metrics`` (one row per image and image set).
    """
    config = EvaluationConfig(**params)
    data = inputs_from_preprocess(face_crops, face_masks, training_set)
    loss_record = _identity_loss_record(concept)
    loss_on = bool(loss_record.get("enabled"))
    identity_settings = (stage_two or {}).get("identity") if loss_on else None
    models = load_metric_models(config, identity_settings)
    sets = {"generated": generated_images}
    if config.score_postprocessed and postprocessed_images:
        sets["postprocessed"] = postprocessed_images
    metrics: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    info: dict[str, Any] = {
        "n_sources": len(data["sources"]),
        "n_heldout_sources": len(data["heldout"]),
        "n_references": len(data["references"]),
        "identity_loss": loss_record.get("reason") or ("on" if loss_on else "not recorded"),
    }
    if loss_record:
        metrics["identity_loss_trained"] = 1.0 if loss_on else 0.0
        info["identity_loss_enabled"] = loss_on  # the tracking hook's on/off summary reads it
    else:
        unavailable["identity_loss_trained"] = "concept.json records no identity_loss entry"
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
                heldout=data["heldout"],
                heldout_landmarks=data["heldout_landmarks"],
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
