"""Nodes of the ``preprocess`` pipeline: faces, crops, masks, validation, the accepted set."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from PIL import Image

from magicapture_pipeline.config.preprocess import PreprocessConfig, ValidationConfig
from magicapture_pipeline.core.faces.image_set import analyze_image_set
from magicapture_pipeline.core.faces.images import RawImage, to_pil
from magicapture_pipeline.core.faces.validation import (
    raise_if_failed,
    split_heldout_sources,
    validate_face_metadata,
)

METADATA_COLUMNS = [
    "id", "role", "path", "width", "height", "n_faces", "face_score", "bbox",
    "face_area_fraction", "mask_coverage", "sharpness", "phash", "status", "reason", "crop_box",
    "landmarks5", "mask_source", "identity_distance",
]


def preprocess_faces(
    source_images: dict[str, RawImage],
    reference_images: dict[str, RawImage],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Image.Image], dict[str, Image.Image], dict[str, Image.Image]]:
    """Decode every photo, find its face, crop it and build its face masks and overlay.

    Args:
        source_images: raw source photos ``{id: RawImage}``.
        reference_images: raw reference (style) images ``{id: RawImage}``.
        params: the ``preprocess`` parameters (see ``PreprocessConfig``).

    Returns:
        ``face_metadata`` (one row per file), ``face_crops``, ``face_masks``, ``mask_overlays``.
    """
    config = PreprocessConfig.model_validate(params)
    result = analyze_image_set({"source": source_images, "reference": reference_images}, config)
    metadata = pd.DataFrame(result.rows).reindex(columns=METADATA_COLUMNS)
    return metadata, _pil(result.crops), _pil(result.masks), _pil(result.overlays)


def validate_face_set(face_metadata: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """Check every validation rule on ``face_metadata``; the report lists every failing file.

    Args:
        face_metadata: the table written by ``preprocess_faces``.
        params: the ``validation`` parameters (see ``ValidationConfig``).

    Returns:
        The validation report (saved whether or not the set passes).
    """
    return validate_face_metadata(face_metadata, ValidationConfig.model_validate(params))


def accept_training_set(
    validation_report: dict[str, Any], face_metadata: pd.DataFrame, params: dict[str, Any]
) -> dict[str, Any]:
    """Stop the run when validation failed; otherwise list what training may use.

    Args:
        validation_report: the output of ``validate_face_set``.
        face_metadata: the table written by ``preprocess_faces``.
        params: the ``preprocess`` parameters (for the resolution).

    Returns:
        ``{"resolution", "latent_resolution", "mask_convention", "items": [...],
        "held_out": [...]}``: training reads ``items`` only; ``held_out`` source photos (split
        off here, before any training) are for the held-out identity score.

    Raises:
        ValidationFailed: one line per offending file.
    """
    raise_if_failed(validation_report)
    config = PreprocessConfig.model_validate(params)
    resolution = config.resolution
    everything = [
        {
            "id": str(row.id),
            "role": row.role,
            "crop": f"{row.role}/{row.id}",
            "mask": f"image/{row.role}/{row.id}",
            "latent_mask": f"latent/{row.role}/{row.id}",
            "landmarks5": json.loads(row.landmarks5) if isinstance(row.landmarks5, str) else None,
        }
        for row in face_metadata.itertuples()
    ]
    sources = [item["id"] for item in everything if item["role"] == "source"]
    _, heldout_ids = split_heldout_sources(
        sources, config.heldout_sources, config.heldout_min_sources
    )
    held = set(heldout_ids)
    items = [i for i in everything if not (i["role"] == "source" and i["id"] in held)]
    return {
        "resolution": resolution,
        "latent_resolution": resolution // 8,
        "mask_convention": "masks are the face region (255 = face); source images train on the "
        "face mask, reference images on its complement (all-ones when no face; a face the "
        "mesh cannot outline has its detection box masked)",
        "items": items,
        "held_out": [i for i in everything if i["role"] == "source" and i["id"] in held],
        "held_out_rule": f"the last {config.heldout_sources} source photo(s) in id order when "
        f"at least {config.heldout_min_sources} are accepted; never trained on",
    }


def _pil(arrays: dict) -> dict[str, Image.Image]:
    return {key: to_pil(array) for key, array in arrays.items()}
