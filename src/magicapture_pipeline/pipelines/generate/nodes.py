"""Nodes of the ``generate`` pipeline: sample the concept, record each image, draw a sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.core.generation.steps import generate
from magicapture_pipeline.pipelines.shared import base_model_path


def concept_dir(concept: Any) -> Path:
    """The concept folder from what the ``concept`` dataset loads (a path, or a dict naming it)."""
    if isinstance(concept, str | Path):
        return Path(concept)
    if isinstance(concept, dict):
        for key in ("path", "concept_dir", "dir", "directory"):
            if concept.get(key):
                return Path(concept[key])
    raise TypeError(f"cannot find the concept folder in {type(concept).__name__}: {concept!r:.200}")


def generate_images(
    concept: Any, base_model: dict[str, Any], params: dict[str, Any]
) -> tuple[dict[str, Image.Image], pd.DataFrame, Image.Image]:
    """Sample the composed prompts with the concept; every image carries its provenance.

    Returns:
        ``generated_images`` (key -> PNG with provenance), ``generation_records`` (one row per
        image: seed, prompt, settings) and ``generation_grid`` (contact sheet).
    """
    config = GenerationConfig.model_validate(params)  # a dict, or the model Kedro built
    result = generate(base_model_path(base_model), concept_dir(concept), config)
    return result.images, pd.DataFrame(result.records), result.grid
