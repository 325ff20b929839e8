"""The whole evaluation protocol on one image set (paper: Comparisons), from loaded models.

:func:`load_metric_models` loads the recognizers, CLIP and the aesthetic head once;
:func:`evaluate_with` / :func:`evaluate_images` score an image set with every metric that can run
(:mod:`core.metrics` for identity, :mod:`core.style_metrics` for CLIP); anything that cannot run
lands in ``unavailable`` with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from magicapture_pipeline.core.evaluation.metrics import (
    identity_report,
    load_identity_embedder,
    load_loss_recognizer,
)
from magicapture_pipeline.core.evaluation.stats import mean_with_error
from magicapture_pipeline.core.evaluation.style import (
    ClipEmbedder,
    aesthetic_scores,
    load_aesthetic,
    load_clip,
    style_similarity,
)
from magicapture_pipeline.core.faces.regions import FaceRegions

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Top-level metrics, a per-image table and the reasons for anything not computed."""

    metrics: dict[str, float]
    per_image: dict[str, dict[str, Any]]
    unavailable: dict[str, str]
    info: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """Numbers at the top level (for DVC) + ``unavailable`` + ``info``."""
        return {**self.metrics, "unavailable": dict(self.unavailable), "info": dict(self.info)}


def evaluate_images(
    generated: Mapping[str, Image.Image],
    sources: Sequence[Image.Image],
    references: Sequence[Image.Image],
    *,
    identity: tuple[Any, str | None],
    clip: tuple[ClipEmbedder | None, str | None],
    aesthetic: tuple[torch.nn.Module | None, str | None],
    face_mask_fn: Callable[[Image.Image], Image.Image | None] | None,
    face_detect_fn: Callable[[Image.Image], bool] | None,
    reference_masks: Sequence[Image.Image | None] | None = None,
    source_landmarks: Sequence[np.ndarray | None] | None = None,
    mask_face_for_style: bool = True,
    unavailable_reasons: Mapping[str, str] | None = None,
    landmark_fn: Callable[[np.ndarray], np.ndarray | None] | None = None,
    heldout: Sequence[Image.Image] = (),
    heldout_landmarks: Sequence[np.ndarray | None] | None = None,
    loss_recognizer: tuple[Any, str | None] | None = None,
) -> Evaluation:
    """Every metric of the protocol that can run with what was loaded.

    Each ``(object, reason)`` pair comes from the matching ``load_*`` function; a None object puts
    its metric(s) in ``unavailable`` with the reason. ``heldout`` are source photos training never
    saw (``<csim>_heldout`` and the copy check); ``loss_recognizer`` is
    :func:`load_loss_recognizer`'s answer (the CSIM key gains ``_same_as_loss`` when the
    recognizer is the identity loss's network).
    """
    unavailable: dict[str, str] = dict(unavailable_reasons or {})
    metrics: dict[str, float] = {"n_images": float(len(generated))}
    per_image: dict[str, dict[str, Any]] = {k: {} for k in sorted(generated)}
    info: dict[str, Any] = {}

    _add_identity(
        identity_report_args={
            "sources": sources,
            "heldout": heldout,
            "source_landmarks": source_landmarks,
            "heldout_landmarks": heldout_landmarks,
            "landmark_fn": landmark_fn,
            "loss_recognizer": loss_recognizer,
        },
        identity=identity,
        generated=generated,
        out=(metrics, per_image, unavailable, info),
    )

    if face_detect_fn is not None:
        detected = {k: bool(face_detect_fn(generated[k])) for k in per_image}
        for key, found in detected.items():
            per_image[key]["face_detected"] = found
        if detected:
            metrics["face_detected_rate"] = float(np.mean(list(detected.values())))
    else:
        unavailable.setdefault("face_detected_rate", "no face detector available")

    clip_model, clip_reason = clip
    if clip_model is None:
        unavailable["style_similarity"] = clip_reason or "no CLIP model"
    elif not references:
        unavailable["style_similarity"] = "no reference (style) images"
    else:
        masks: dict[str, Image.Image | None] = {}
        if mask_face_for_style and face_mask_fn is not None:
            masks = {k: face_mask_fn(generated[k]) for k in per_image}
        elif mask_face_for_style:
            info["style_mask_note"] = "no face masker: generated images scored unmasked"
        style = style_similarity(
            clip_model,
            generated,
            references,
            masks,
            reference_masks if mask_face_for_style else None,
        )
        for key, value in style.per_image.items():
            per_image[key]["style_similarity"] = value
            per_image[key]["style_face_masked"] = style.masked.get(key, False)
        metrics.update(mean_with_error("style_similarity", style.per_image.values()))

    head, head_reason = aesthetic
    if clip_model is None:
        unavailable["aesthetic_score"] = f"needs CLIP ViT-L/14: {clip_reason}"
    elif head is None:
        unavailable["aesthetic_score"] = head_reason or "no aesthetic head"
    else:
        try:
            scores = aesthetic_scores(head, clip_model, generated)
        except ValueError as error:
            unavailable["aesthetic_score"] = str(error)
        else:
            for key, value in scores.items():
                per_image[key]["aesthetic_score"] = value
            metrics.update(mean_with_error("aesthetic_score", scores.values()))

    for name, why in unavailable.items():
        logger.warning("Metric %s unavailable: %s", name, why)
    return Evaluation(metrics, per_image, unavailable, info)


def _add_identity(
    *,
    identity_report_args: dict[str, Any],
    identity: tuple[Any, str | None],
    generated: Mapping[str, Image.Image],
    out: tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, str], dict[str, Any]],
) -> None:
    metrics, per_image, unavailable, info = out
    embedder, reason = identity
    if embedder is None:
        unavailable["csim"] = reason or "no identity embedder"
        return
    report = identity_report(embedder, generated, **identity_report_args)
    name = report.name
    info["csim_backend"] = embedder.backend
    info["csim_metric"] = name
    info["csim_source_faces"] = report.training.n_source_faces
    info["csim_heldout_photos"] = len(identity_report_args["heldout"])
    info["csim_same_as_loss"] = report.same_as_loss
    if report.agreement is not None:
        info["csim_loss_network_agreement"] = report.agreement
    if report.note:
        info["csim_note"] = report.note
    if report.same_as_loss:
        unavailable[f"csim_{embedder.backend}"] = (
            f"the recognizer is the network the identity loss trained against; reported as {name}"
        )
    for key, value in report.training.per_image.items():
        per_image[key][name] = value
    if report.heldout is not None:
        for key, value in report.heldout.per_image.items():
            per_image[key][report.heldout.name] = value
        if report.heldout.reason or report.heldout.mean is None:
            unavailable[report.heldout.name] = (
                report.heldout.reason or "no face found in any generated image"
            )
    else:
        unavailable[f"{name}_heldout"] = (
            "no held-out source photo (preprocessing holds one out when at least "
            "preprocess.heldout_min_sources photos are accepted)"
        )
    for key, values in report.copy_check.items():
        prefix = f"copy_check_{name.removeprefix('csim_')}"
        per_image[key].update({f"{prefix}_{k}": v for k, v in values.items()})
    if report.training.reason:
        unavailable[name] = report.training.reason
    elif report.training.mean is None:
        unavailable[name] = "no face found in any generated image"
    metrics.update(report.metrics())


@dataclass
class MetricModels:
    """Everything the protocol loads once and reuses across image sets (and benchmark variants)."""

    identity: tuple[Any, str | None]
    clip: tuple[ClipEmbedder | None, str | None]
    aesthetic: tuple[torch.nn.Module | None, str | None]
    faces: FaceRegions | None
    faces_reason: str | None = None
    loss_recognizer: tuple[Any, str | None] | None = None

    def close(self) -> None:
        """Release mediapipe."""
        if self.faces is not None:
            self.faces.close()


def load_metric_models(
    config: Any, identity_loss: Mapping[str, Any] | None = None
) -> MetricModels:
    """Load the embedders an ``EvaluationConfig`` asks for; failures become reasons.

    ``identity_loss``: the concept's ``stage_two.identity`` settings, so a CSIM made by the
    network the identity loss trained against is labelled ``_same_as_loss``.
    """
    try:
        faces: FaceRegions | None = FaceRegions()
        faces_reason = None
    except Exception as error:  # noqa: BLE001
        faces, faces_reason = None, f"mediapipe face analysis unavailable: {error}"
    identity = load_identity_embedder(config.identity_backend, config.arcface_model)
    if identity[0] is not None and identity[0].backend == "arcface" and faces is not None:
        identity[0].landmark_finder = faces.landmarks5
    clip = load_clip(config.clip_model, config.local_files_only, config.device)
    aesthetic = load_aesthetic(config.aesthetic_model)
    loss = load_loss_recognizer(identity_loss) if identity[0] is not None else None
    if loss is not None and loss[0] is not None and faces is not None:
        loss[0].landmark_finder = faces.landmarks5
    return MetricModels(identity, clip, aesthetic, faces, faces_reason, loss)


def evaluate_with(
    models: MetricModels,
    generated: Mapping[str, Image.Image],
    sources: Sequence[Image.Image],
    references: Sequence[Image.Image],
    *,
    reference_masks: Sequence[Image.Image | None] | None = None,
    source_landmarks: Sequence[np.ndarray | None] | None = None,
    mask_face_for_style: bool = True,
    heldout: Sequence[Image.Image] = (),
    heldout_landmarks: Sequence[np.ndarray | None] | None = None,
) -> Evaluation:
    """:func:`evaluate_images` with loaded ``MetricModels``."""
    faces = models.faces
    extra = {"face_detected_rate": models.faces_reason} if faces is None else {}
    return evaluate_images(
        generated,
        sources,
        references,
        identity=models.identity,
        clip=models.clip,
        aesthetic=models.aesthetic,
        face_mask_fn=faces.style_mask if faces is not None else None,
        face_detect_fn=faces.detected if faces is not None else None,
        reference_masks=reference_masks,
        source_landmarks=source_landmarks,
        mask_face_for_style=mask_face_for_style,
        unavailable_reasons=extra,
        landmark_fn=faces.landmarks5 if faces is not None else None,
        heldout=heldout,
        heldout_landmarks=heldout_landmarks,
        loss_recognizer=models.loss_recognizer,
    )
