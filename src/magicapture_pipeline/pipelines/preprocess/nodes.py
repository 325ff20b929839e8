"""Nodes of the ``preprocess`` pipeline: faces, crops, masks, validation, the accepted set."""

from __future__ import annotations

from typing import Any

import pandas as pd
from PIL import Image

from magicapture_pipeline.config.preprocess import PreprocessConfig, ValidationConfig
from magicapture_pipeline.core.faces.face_set import training_set_contract
from magicapture_pipeline.core.faces.image_set import preprocess
from magicapture_pipeline.core.faces.images import RawImage
from magicapture_pipeline.core.faces.validation import raise_if_failed, validate_face_metadata


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
    return preprocess(source_images, reference_images, config)


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
        params: the ``preprocess`` parameters (resolution, held-out rule).

    Returns:
        The ``training_set`` (:func:`core.faces.face_set.training_set_contract`).

    Raises:
        ValidationFailed: one line per offending file.
    """
    raise_if_failed(validation_report)
    return training_set_contract(face_metadata, PreprocessConfig.model_validate(params))
