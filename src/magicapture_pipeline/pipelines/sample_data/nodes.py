"""Nodes of the ``sample_data`` pipeline: public-domain demo photos with a provenance manifest."""

from __future__ import annotations

from typing import Any

from PIL import Image

from magicapture_pipeline.config.preprocess import SampleDataConfig
from magicapture_pipeline.core.faces.images import to_pil
from magicapture_pipeline.core.faces.sample_data import build_sample_set, manifest


def build_sample_data(
    params: dict[str, Any],
) -> tuple[dict[str, Image.Image], dict[str, Image.Image], dict[str, Any]]:
    """Build the demo source and reference sets from images shipped in installed packages.

    Args:
        params: the ``sample_data`` parameters (see ``SampleDataConfig``).

    Returns:
        Source images and reference images keyed by file stem, and the provenance manifest.
    """
    config = SampleDataConfig.model_validate(params)
    source = build_sample_set("source", config.n_source)
    reference = build_sample_set("reference", config.n_reference)
    return _by_stem(source), _by_stem(reference), manifest(source + reference)


def _by_stem(images: list) -> dict[str, Image.Image]:
    return {image.file_name.rsplit(".", 1)[0]: to_pil(image.pixels) for image in images}
