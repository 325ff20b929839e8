"""Node of the ``register`` pipeline: ``serving.registration.register_concept`` does the work."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.config.serving import ServingConfig
from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.core.generation.export import git_commit
from magicapture_pipeline.pipelines.shared import base_model_path
from magicapture_pipeline.serving.base_model import portable_reference
from magicapture_pipeline.serving.gallery import GALLERY_ARTIFACT, build_gallery, gallery_rows
from magicapture_pipeline.serving.registration import register_concept as register_in_mlflow

logger = logging.getLogger(__name__)


def _concept_dir(concept: Any) -> Path:
    """The exported concept folder, whatever form the ``concept`` dataset loads as."""
    if isinstance(concept, dict):
        concept = concept.get("path") or concept.get("dir") or concept.get("directory")
    concept = getattr(concept, "path", concept)
    if concept is None or not (Path(concept) / "concept.json").is_file():
        raise ValueError(f"No exported concept folder (with concept.json) in {concept!r}")
    return Path(concept).resolve()


def model_config_for(
    base_model: dict[str, Any] | str,
    generation: GenerationConfig,
    serving: ServingConfig,
    project_root: str | Path,
) -> dict[str, Any]:
    """The registered pyfunc's config: portable base model, ``generate``'s sampling, limits."""
    reference, kind = portable_reference(base_model_path(base_model), project_root)
    if kind == "local_path":
        logger.warning(
            "Base model %s lies outside the project: the registered concept loads only where "
            "that folder exists (use a hub id or a folder inside the project to move it)",
            reference,
        )
    return {
        "base_model": reference,
        "base_model_kind": kind,
        "sampling": generation.sampling().model_dump(),
        "limits": serving.limits.model_dump(),
        "concept_name": generation.concept_name,
        "commit": git_commit(project_root),
    }


def register_concept(
    concept: Any,
    base_model: dict[str, Any],
    metrics: dict[str, Any],
    mlflow_run: dict[str, Any],
    registry: dict[str, Any],
    generation: dict[str, Any],
    serving: dict[str, Any],
) -> dict[str, Any]:
    """Register the concept as a new version of ``magicapture-<concept>`` aliased ``candidate``.

    Args:
        concept: the ``concept`` dataset (the exported folder).
        base_model: ``{"path": folder or hub id, ...}``; referenced by the model, not copied.
        metrics: ``metrics.json``; numeric keys become the version's ``metric.*`` tags.
        mlflow_run: ``{"run_id", "tracking_uri", "project_path"}`` from the tracking hook
            (run_id None: tracking disabled).
        registry: ``params:registry``.
        generation: ``params:generation``; its sampling settings go into the model unchanged.
        serving: ``params:serving``; its request limits go into the model.

    Returns:
        What was registered; ``registered: false`` and a reason when tracking or registry is off.
    """
    # Parameters arrive as plain mappings and are validated here: a node parameter typed as a
    # pydantic model is validated by Kedro itself before any hook, which would pre-empt the
    # ParameterCheckHook's one-line-per-problem report (field, value, allowed range).
    config = RegistryConfig.model_validate(registry)
    if not config.enabled or not mlflow_run.get("run_id"):
        reason = "registry.enabled is false" if not config.enabled else mlflow_run.get("reason")
        logger.warning("Concept not registered: %s", reason)
        return {"registered": False, "reason": reason, "model_name": config.model_name}
    model_config = model_config_for(
        base_model,
        GenerationConfig.model_validate(generation),
        ServingConfig.model_validate(serving),
        mlflow_run.get("project_path") or Path.cwd(),
    )
    record = register_in_mlflow(
        _concept_dir(concept),
        model_config,
        metrics,
        run_id=mlflow_run["run_id"],
        tracking_uri=mlflow_run["tracking_uri"],
        config=config,
    )
    if not config.gallery_prompts:
        return {"registered": True, **record}
    generation_config = GenerationConfig.model_validate(generation)
    prompts, seeds = gallery_rows(
        [*generation_config.prompt_templates, *generation_config.extra_prompts],
        generation_config.seed,
        config.gallery_prompts,
    )
    with tempfile.TemporaryDirectory(prefix="magicapture-gallery-") as tmp:
        build_gallery(
            config.model_name,
            mlflow_run["tracking_uri"],
            Path(tmp) / "gallery",
            prompts,
            seeds,
            max_versions=config.gallery_versions,
            run_id=mlflow_run["run_id"],
            project_root=mlflow_run.get("project_path") or Path.cwd(),
        )
    return {"registered": True, **record, "gallery": f"{GALLERY_ARTIFACT}/index.html"}
