"""The evaluation step: generated (and post-processed) image sets scored against the face set.

One entry point, :func:`evaluate`, for the ``evaluate`` pipeline; :func:`score_images` scores one
image set and is what the benchmark's rows (:mod:`core.evaluation.baselines`) call, so every row
and the pipeline share the protocol (paper, Experiments: Comparisons) and its inputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from magicapture_pipeline.core.evaluation.protocol import Evaluation, MetricModels, evaluate_with
from magicapture_pipeline.core.faces.face_set import EvaluationInputs, materialise

POSTPROCESSED_PREFIX = "postprocessed_"


def score_images(
    models: MetricModels,
    images: Mapping[str, Image.Image],
    inputs: EvaluationInputs,
    mask_face_for_style: bool,
) -> Evaluation:
    """One image set scored against the face set's training, held-out and reference images."""
    return evaluate_with(
        models,
        images,
        inputs.sources,
        inputs.references,
        reference_masks=inputs.masks,
        source_landmarks=inputs.landmarks,
        mask_face_for_style=mask_face_for_style,
        heldout=inputs.heldout,
        heldout_landmarks=inputs.heldout_landmarks,
    )


def identity_loss_record(concept: Any) -> dict[str, Any]:
    """``concept.json``'s ``identity_loss`` entry, whatever form the concept input takes."""
    if isinstance(concept, dict) and "identity_loss" in concept:
        return dict(concept["identity_loss"] or {})
    folder = concept.get("path") if isinstance(concept, dict) else concept
    path = Path(str(folder)) / "concept.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("identity_loss") or {})


def evaluate(
    image_sets: Mapping[str, Mapping[str, Any]],
    inputs: EvaluationInputs,
    models: MetricModels,
    *,
    mask_face_for_style: bool,
    loss_record: Mapping[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every image set (``"generated"`` first, then e.g. ``"postprocessed"``).

    Metrics of a set other than ``"generated"`` carry the ``postprocessed_`` prefix.
    ``loss_record`` is the concept's ``identity_loss`` entry (:func:`identity_loss_record`):
    ``identity_loss_trained`` (1 / 0) says whether the concept trained with the identity loss
    (Eq. 7).

    Returns:
        ``metrics`` (numbers at the top level, ``unavailable: {metric: reason}``, ``info``) and
        the per-image rows (one per image and image set).
    """
    loss_on = bool(loss_record.get("enabled"))
    # how many source photos training never saw: promotion gates read held-out CSIM when > 0
    metrics: dict[str, Any] = {"heldout_photos": float(len(inputs.heldout))}
    unavailable: dict[str, str] = {}
    info: dict[str, Any] = {
        "n_sources": len(inputs.sources),
        "n_heldout_sources": len(inputs.heldout),
        "n_references": len(inputs.references),
        "identity_loss": loss_record.get("reason") or ("on" if loss_on else "not recorded"),
    }
    if loss_record:
        metrics["identity_loss_trained"] = 1.0 if loss_on else 0.0
        info["identity_loss_enabled"] = loss_on  # the tracking hook's on/off summary reads it
    else:
        unavailable["identity_loss_trained"] = "concept.json records no identity_loss entry"
    rows: list[dict[str, Any]] = []
    for name, images in image_sets.items():
        loaded = {k: materialise(v).convert("RGB") for k, v in sorted(images.items())}
        result = score_images(models, loaded, inputs, mask_face_for_style)
        prefix = "" if name == "generated" else POSTPROCESSED_PREFIX
        metrics.update({prefix + k: v for k, v in result.metrics.items()})
        unavailable.update({prefix + k: v for k, v in result.unavailable.items()})
        info.update({prefix + k: v for k, v in result.info.items()})
        rows += [{"image": k, "image_set": name, **v} for k, v in result.per_image.items()]
    return {**metrics, "unavailable": unavailable, "info": info}, rows
