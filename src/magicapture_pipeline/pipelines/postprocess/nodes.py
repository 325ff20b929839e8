"""Nodes of the ``postprocess`` pipeline."""

from __future__ import annotations

from typing import Any

from PIL import Image

from magicapture_pipeline.config.generation import PostprocessConfig
from magicapture_pipeline.core.generation.steps import postprocess


def postprocess_generated(
    generated_images: dict[str, Any], params: dict[str, Any]
) -> tuple[dict[str, Image.Image], dict[str, Any]]:
    """Super-resolve and restore faces where available; re-mark every image's provenance.

    Returns:
        ``postprocessed_images`` and ``postprocess_report`` (steps per image, sizes, and
        ``unavailable: {step: reason}``); see :func:`core.generation.steps.postprocess`.
    """
    return postprocess(generated_images, PostprocessConfig(**params))
