"""Nodes of the ``train_stage_one`` pipeline: the base model and the embedding-only stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from torch import Tensor

from magicapture_pipeline.config.training import ModelConfig, StageOneConfig
from magicapture_pipeline.core.models.families import build_tiny_model, embeddings_to_tensors
from magicapture_pipeline.core.models.loading import is_local_model, load_components, model_family
from magicapture_pipeline.core.training import (
    StageOneTrainer,
    examples_from_training_set,
)
from magicapture_pipeline.core.training.figures import loss_curves_figure

logger = logging.getLogger(__name__)


def _check_hub_model(hub_id: str, revision: str | None) -> None:
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(hub_id, "model_index.json", revision=revision)
    except Exception as error:  # the hub raises many types; all mean "not loadable here"
        raise RuntimeError(
            f"base model {hub_id!r} is neither a local diffusers folder nor reachable on the hub "
            f"(or in the HF cache): {error}. Set model.pretrained to a folder or run with "
            "--env=demo for the tiny model."
        ) from error


def prepare_base_model(params: dict[str, Any]) -> dict[str, Any]:
    """Make sure the base model loads; in the demos build the tiny random SD / SDXL first if
    missing.

    Returns:
        ``base_model``: ``{"path", "tiny", "revision", "built", "family"}`` (the family as the
        model's ``model_index.json`` says, ``sd15`` or ``sdxl``).
    """
    config = ModelConfig(**params)
    built = False
    if config.tiny is not None and not is_local_model(config.pretrained):
        build_tiny_model(config.pretrained, config.tiny)
        built = True
    if config.tiny is not None or Path(config.pretrained).is_dir():
        load_components(config.pretrained)  # the very path training takes
    else:
        _check_hub_model(config.pretrained, config.revision)
    family = model_family(config.pretrained, config.revision)
    logger.info("Base model %s (%s, %s)", config.pretrained, family, "tiny" if config.tiny else "")
    return {
        "path": config.pretrained,
        "tiny": config.tiny is not None,
        "revision": config.revision,
        "built": built,
        "family": family,
    }


def train_stage_one(
    base_model: dict[str, Any],
    training_set: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """Learn the [V1]/[V2] embeddings with the masked reconstruction loss (Eq. 4-5).

    Returns:
        ``stage_one_embeddings`` (``{token: tensor}``; SDXL ``{"clip_l/<token>": tensor, ...}``,
        ``core.families.embeddings_to_tensors``) and ``stage_one_history``.
    """
    config = StageOneConfig(**params)
    components = load_components(base_model["path"], revision=base_model.get("revision"))
    examples = examples_from_training_set(training_set, face_crops, face_masks)
    trainer = StageOneTrainer(components, examples, config)
    trainer.train()
    result = trainer.result()
    return embeddings_to_tensors(result.embeddings), pd.DataFrame(result.history)


def plot_stage_one_losses(history: pd.DataFrame) -> Image.Image:
    """Loss curves of stage one (raw and running mean) for a person to look at."""
    return loss_curves_figure(history, "stage one: loss terms per optimiser step")
