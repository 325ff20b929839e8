"""Nodes of the ``generate`` pipeline: sample the concept, record each image, draw a sheet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.core.generation.export import git_commit
from magicapture_pipeline.core.generation.postprocess import mark, provenance_record
from magicapture_pipeline.core.generation.sampling import make_grid, run_generation
from magicapture_pipeline.pipelines.shared import base_model_path

logger = logging.getLogger(__name__)


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
    folder = concept_dir(concept)
    run = run_generation(base_model_path(base_model), folder, config)
    commit = git_commit()
    watermark = config.watermark_text if config.watermark else None
    images: dict[str, Image.Image] = {}
    rows = []
    for item in run.images:
        record = provenance_record(
            concept=config.concept_name,
            base_model=run.settings["base_model"],
            prompt=item.prompt,
            seed=item.seed,
            commit=commit,
            stage="generated",
            settings=run.settings,
        )
        images[item.key] = mark(item.image, record, watermark)
        row = item.record(run.settings)
        row["watermarked"] = "watermark" in images[item.key].info["magicapture"]
        rows.append(row)
    grid = make_grid(
        [i.image for i in run.images], [i.key for i in run.images], config.grid_columns
    )
    grid_record = provenance_record(
        concept=config.concept_name,
        base_model=run.settings["base_model"],
        prompt=None,
        seed=config.seed,
        commit=commit,
        stage="contact_sheet",
        images=[i.key for i in run.images],
    )
    logger.info("Generated %d images from %s", len(images), folder)
    return images, pd.DataFrame(rows), mark(grid, grid_record, watermark)
