"""Node of the ``register`` pipeline: the registry does the work (``registry.register_concept``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.registry import register_concept as register_in_mlflow

logger = logging.getLogger(__name__)


def _concept_dir(concept: Any) -> Path:
    """The exported concept folder, whatever form the ``concept`` dataset loads as."""
    if isinstance(concept, dict):
        concept = concept.get("path") or concept.get("dir") or concept.get("directory")
    concept = getattr(concept, "path", concept)
    if concept is None or not (Path(concept) / "concept.json").is_file():
        raise ValueError(f"No exported concept folder (with concept.json) in {concept!r}")
    return Path(concept).resolve()


def _base_reference(base_model: dict[str, Any]) -> str:
    """The base model's folder made absolute (so a fresh process finds it), or its hub id."""
    path = Path(base_model["path"])
    return str(path.resolve()) if path.exists() else str(base_model["path"])


def register_concept(
    concept: Any,
    base_model: dict[str, Any],
    metrics: dict[str, Any],
    mlflow_run: dict[str, Any],
    registry: RegistryConfig,
) -> dict[str, Any]:
    """Register the concept as a new version of ``magicapture-<concept>`` aliased ``candidate``.

    Args:
        concept: the ``concept`` dataset (the exported folder).
        base_model: ``{"path": folder or hub id, ...}``; referenced by the model, not copied.
        metrics: ``metrics.json``; numeric keys become the version's ``metric.*`` tags.
        mlflow_run: ``{"run_id", "tracking_uri"}`` from the tracking hook (run_id None: disabled).
        registry: ``params:registry``.

    Returns:
        What was registered; ``registered: false`` and a reason when tracking or registry is off.
    """
    config = RegistryConfig.model_validate(registry)
    if not config.enabled or not mlflow_run.get("run_id"):
        reason = "registry.enabled is false" if not config.enabled else mlflow_run.get("reason")
        logger.warning("Concept not registered: %s", reason)
        return {"registered": False, "reason": reason, "model_name": config.model_name}
    record = register_in_mlflow(
        _concept_dir(concept),
        _base_reference(base_model),
        metrics,
        run_id=mlflow_run["run_id"],
        tracking_uri=mlflow_run["tracking_uri"],
        config=config,
    )
    return {"registered": True, **record}
