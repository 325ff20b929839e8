"""The generation steps: sample a trained concept, then post-process the samples (paper:
Postprocessing).

One entry point per step, taking its typed config: :func:`generate` (``GenerationConfig``) and
:func:`postprocess` (``PostprocessConfig``). Each returns the images marked with their
provenance (and the invisible watermark when the config asks), what the ``generate`` and
``postprocess`` pipelines write. :func:`restore_and_upscale` is the post-processing itself, which
the benchmark's rows (:mod:`core.evaluation.baselines`) call on unmarked samples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from magicapture_pipeline.config.generation import GenerationConfig, PostprocessConfig
from magicapture_pipeline.core.faces.face_set import materialise
from magicapture_pipeline.core.generation.export import git_commit
from magicapture_pipeline.core.generation.postprocess import (
    PROVENANCE_KEY,
    PostprocessResult,
    mark,
    postprocess_images,
    provenance_record,
    read_provenance,
)
from magicapture_pipeline.core.generation.sampling import make_grid, run_generation

logger = logging.getLogger(__name__)


@dataclass
class GeneratedSet:
    """The samples of one concept, each with its provenance, as the ``generate`` step writes them.

    Attributes:
        images: key -> PNG-ready image carrying its provenance (``info["magicapture"]``).
        records: one row per image (seed, prompt, settings, ``watermarked``).
        grid: the contact sheet, marked as one.
    """

    images: dict[str, Image.Image]
    records: list[dict[str, Any]]
    grid: Image.Image


def generate(base_model: str | Path, concept_dir: Path, config: GenerationConfig) -> GeneratedSet:
    """Sample the composed prompts with the concept; every image carries its provenance."""
    run = run_generation(base_model, concept_dir, config)
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
        row["watermarked"] = "watermark" in images[item.key].info[PROVENANCE_KEY]
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
    logger.info("Generated %d images from %s", len(images), concept_dir)
    return GeneratedSet(images, rows, mark(grid, grid_record, watermark))


def restore_and_upscale(
    images: dict[str, Image.Image],
    config: PostprocessConfig,
    faces: Any = None,
    *,
    progress: bool = True,
) -> PostprocessResult:
    """Super-resolution and face restoration as ``config`` asks, each step when available.

    ``faces`` (a :class:`core.faces.regions.FaceRegions`, or None) gives the face mask the
    restored face is blended back through and the landmarks CodeFormer aligns on.
    """
    sr = config.super_resolution
    restoration = config.face_restoration
    restorer = (
        (restoration.backend, restoration.checkpoint, restoration.fidelity_weight)
        if restoration.enabled
        else None
    )
    return postprocess_images(
        images,
        super_resolution=sr.enabled,
        upscaler_kwargs=sr.upscaler_kwargs(),
        restorer=restorer,
        face_mask_fn=faces.mask if faces is not None else None,
        feather=restoration.blend_feather,
        progress=progress,
        landmark_fn=faces.landmarks5 if faces is not None else None,
    )


def _face_regions() -> Any:
    """A face masker for blending, or None (blending then uses the restorer's output as is)."""
    try:
        from magicapture_pipeline.core.faces.regions import FaceRegions

        return FaceRegions()
    except Exception:  # noqa: BLE001 - blending then uses the restorer output as is
        return None


def postprocess(
    generated: Mapping[str, Any], config: PostprocessConfig
) -> tuple[dict[str, Image.Image], dict[str, Any]]:
    """Super-resolve and restore faces where available; re-mark every image's provenance.

    ``generated`` values may be images or the lazy loaders of a partitioned dataset. The face
    masker (mediapipe) is loaded only when restoration runs from a checkpoint.

    Returns:
        The post-processed images and the report (steps per image, sizes, and
        ``unavailable: {step: reason}``).
    """
    originals = {key: materialise(value) for key, value in sorted(generated.items())}
    restoration = config.face_restoration
    sr = config.super_resolution
    masker = _face_regions() if restoration.enabled and restoration.checkpoint else None
    result = restore_and_upscale(originals, config, masker)
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
