"""Nodes of the ``postprocess`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from magicapture_pipeline.config.generation import PostprocessConfig
from magicapture_pipeline.core.generation.postprocess import (
    PROVENANCE_KEY,
    mark,
    postprocess_images,
    read_provenance,
)
from magicapture_pipeline.pipelines.shared import materialise

logger = logging.getLogger(__name__)


def _face_masker() -> tuple[Any, str | None]:
    try:
        from magicapture_pipeline.core.evaluation.metrics import FaceRegions

        return FaceRegions(), None
    except Exception as error:  # noqa: BLE001 - blending then uses the restorer output as is
        return None, f"no face masker (mediapipe): {error}"


def postprocess_generated(
    generated_images: dict[str, Any], params: dict[str, Any]
) -> tuple[dict[str, Image.Image], dict[str, Any]]:
    """Super-resolve and restore faces where available; re-mark every image's provenance.

    Returns:
        ``postprocessed_images`` and ``postprocess_report`` (steps per image, sizes, and
        ``unavailable: {step: reason}``).
    """
    config = PostprocessConfig(**params)
    originals = {key: materialise(value) for key, value in sorted(generated_images.items())}
    restoration = config.face_restoration
    restorer = None
    masker = None
    if restoration.enabled:
        restorer = (restoration.backend, restoration.checkpoint, restoration.fidelity_weight)
        if restoration.checkpoint:
            masker, _ = _face_masker()
    sr = config.super_resolution
    result = postprocess_images(
        originals,
        super_resolution=sr.enabled,
        upscaler_kwargs=sr.upscaler_kwargs(),
        restorer=restorer,
        face_mask_fn=masker.mask if masker is not None else None,
        feather=restoration.blend_feather,
        landmark_fn=masker.landmarks5 if masker is not None else None,
    )
    if masker is not None:
        masker.close()
    watermark = config.watermark_text if config.watermark else None
    images: dict[str, Image.Image] = {}
    per_image: dict[str, Any] = {}
    for key, image in result.images.items():
        source = read_provenance(originals[key]) or {}
        record = {
            **{k: v for k, v in source.items() if not k.startswith("watermark")},
            "stage": "postprocessed",
            "postprocess_steps": result.steps[key],
            "source_image": key,
        }
        images[key] = mark(image, record, watermark)
        per_image[key] = {
            "steps": result.steps[key],
            "input_size": list(originals[key].size),
            "output_size": list(image.size),
            "watermarked": "watermark" in images[key].info[PROVENANCE_KEY],
        }
    report = {
        "n_images": len(images),
        "super_resolution": "super_resolution" not in result.unavailable and sr.enabled,
        "face_restoration": "face_restoration" not in result.unavailable and restoration.enabled,
        "unavailable": result.unavailable,
        "disabled": [
            name
            for name, on in (
                ("super_resolution", sr.enabled),
                ("face_restoration", restoration.enabled),
            )
            if not on
        ],
        "images": per_image,
    }
    return images, report
