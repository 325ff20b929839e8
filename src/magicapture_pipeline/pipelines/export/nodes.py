"""Node of the ``export`` pipeline: ``serving.export_source.export_request`` does the work (the
same call as ``make export``); the ``concept_export`` dataset writes the folder."""

from __future__ import annotations

from typing import Any

from magicapture_pipeline.config.export import ExportConfig
from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.core.generation.bundle import ExportRequest, ExportSource
from magicapture_pipeline.serving.export_source import export_request


def export_concept(  # noqa: PLR0913 (one input per catalog entry)
    concept_export_source: ExportSource,
    concept: str,
    export: dict[str, Any],
    registry: dict[str, Any],
    generation: dict[str, Any],
    mlflow_run: dict[str, Any],
) -> ExportRequest:
    """The export ``params:export`` asks for.

    Args:
        concept_export_source: the concept folder, its metrics and the generate step's grid.
        concept: ``params:concept``, the name the files and trigger words carry.
        export: ``params:export`` (format; alias or model_version of a registered version).
        registry: ``params:registry`` (``model_name``: where a registered version is looked up).
        generation: ``params:generation``: the sampling settings the card recommends for the
            concept folder when the generate step left no records (with records, the settings
            it drew the grid with). A registered version carries its own.
        mlflow_run: ``{"tracking_uri", ...}`` from the tracking hook: where the registry is.

    Returns:
        The request the ``concept_export`` dataset writes.
    """
    # Parameters arrive as plain mappings and are validated here (see register/nodes.py).
    config = ExportConfig.model_validate(export)
    source = concept_export_source
    if source.sampling is None:  # no generation records: this run's generation settings
        source.sampling = GenerationConfig.model_validate(generation).sampling()
    model_name = RegistryConfig.model_validate(registry).model_name
    return export_request(concept, config, source, model_name, mlflow_run.get("tracking_uri"))
