"""Node of the ``batch_generate`` pipeline: the work is in ``serving/batch.py``."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from PIL import Image

from magicapture_pipeline.config.serving import ServingConfig
from magicapture_pipeline.serving.batch import load_registered, model_version, sample_table

logger = logging.getLogger(__name__)


def generate_batch(
    batch_prompts: pd.DataFrame, serving: dict[str, Any], mlflow_run: dict[str, Any]
) -> tuple[dict[str, Image.Image], pd.DataFrame]:
    """Sample every row of the prompts file with the registered concept ``serving.model_uri``.

    Args:
        batch_prompts: ``prompt`` and optional ``seed``, ``steps``, ``guidance_scale`` columns.
        serving: ``params:serving`` (``model_uri``, ``batch_chunk_rows``).
        mlflow_run: ``{"tracking_uri", ...}`` from the tracking hook: where the registry is.

    Returns:
        ``batch_images`` (key -> PNG with provenance) and ``batch_records`` (one row per image:
        key, prompt, seed and the settings used, model URI and version).
    """
    # Parameters arrive as a plain mapping and are validated here: a node parameter typed as a
    # pydantic model is validated by Kedro itself before any hook, which would pre-empt the
    # ParameterCheckHook's one-line-per-problem report (field, value, allowed range).
    config = ServingConfig.model_validate(serving)
    if "prompt" not in batch_prompts.columns:
        raise ValueError(
            f"the prompts file has columns {list(batch_prompts.columns)}; it needs a 'prompt' "
            "column (optional: seed, steps, guidance_scale)"
        )
    tracking_uri = mlflow_run.get("tracking_uri")
    model = load_registered(config.model_uri, tracking_uri)
    images, records = sample_table(model, batch_prompts, config.batch_chunk_rows)
    records["model_uri"] = config.model_uri
    records["model_version"] = model_version(config.model_uri, tracking_uri)
    logger.info("Generated %d images with %s", len(images), config.model_uri)
    return images, records
