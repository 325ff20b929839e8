"""A registered concept version as an export source (issue 22): its concept folder, the
sampling settings it was registered with, the metrics of the run that trained it and that run's
sample grid; and :func:`export_request`, the one place ``make export`` and the ``export``
pipeline turn a source choice into an :class:`~core.generation.bundle.ExportRequest`."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from magicapture_pipeline.config.export import ExportConfig
from magicapture_pipeline.config.generation import SamplingConfig
from magicapture_pipeline.config.tracking import TrackingConfig
from magicapture_pipeline.core.generation.bundle import ExportRequest, ExportSource
from magicapture_pipeline.serving.concept_model import CONCEPT_ARTIFACT
from magicapture_pipeline.tracking.store import tracking_client
from magicapture_pipeline.tracking.uris import tracking

logger = logging.getLogger(__name__)

# Where the tracking hook logs the generate step's contact sheet in the training run
# (TrackingConfig.artifact_datasets["generation_grid"] + the catalog's file name).
GRID_FILE = "generation_grid.png"


def grid_artifact_path() -> str:
    """The run-relative artifact path of the generate step's grid."""
    folder = TrackingConfig().artifact_datasets["generation_grid"]
    return f"{folder}/{GRID_FILE}"


def _version(client: Any, model_name: str, reference: str, config: ExportConfig) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if config.alias is not None:
            return client.get_model_version_by_alias(model_name, config.alias)
        return client.get_model_version(model_name, str(config.model_version))
    except MlflowException as error:
        raise LookupError(f"{reference}: no such version ({error})") from error


def _run_grid(client: Any, run_id: str | None, dest: Path) -> Path | None:
    """The training run's grid, downloaded into ``dest``; None when the run logged none."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        local = client.download_artifacts(run_id, grid_artifact_path(), str(dest))
    except (MlflowException, OSError) as error:
        logger.info("run %s has no %s: %s", run_id, grid_artifact_path(), error)
        return None
    return Path(local) if Path(local).is_file() else None


def registered_source(
    model_name: str, config: ExportConfig, dest: Path, tracking_uri: str
) -> ExportSource:
    """Download the registered version ``config`` names into ``dest``.

    The source's sampling is the version's ``model_config["sampling"]`` (typed defaults when it
    was registered without one), its metrics the run's (MLflow's latest values), its grid the
    training run's ``images/samples/generation_grid.png`` (the generate step's contact sheet,
    drawn with those sampling settings: nothing is generated twice).

    Raises:
        LookupError: no such model, alias or version (naming them), or no concept artifact.
    """
    import mlflow.artifacts
    import yaml

    reference = config.model_reference(model_name)
    client = tracking_client(tracking_uri)
    version = _version(client, model_name, reference, config)
    with tracking(tracking_uri):
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}/{version.version}", dst_path=str(dest / "model")
            )
        )
    folder = local / "artifacts" / CONCEPT_ARTIFACT
    if not folder.is_dir():
        raise LookupError(f"{reference}: no '{CONCEPT_ARTIFACT}' artifact")
    mlmodel_file = local / "MLmodel"
    mlmodel = yaml.safe_load(mlmodel_file.read_text()) if mlmodel_file.is_file() else {}
    # MLflow writes a pyfunc's model_config under flavors.python_function.config
    model_config = ((mlmodel or {}).get("flavors", {}).get("python_function", {})).get("config")
    sampling = dict((model_config or {}).get("sampling") or {})
    metrics = dict(client.get_run(version.run_id).data.metrics) if version.run_id else {}
    (dest / "grid").mkdir(parents=True, exist_ok=True)
    grid = _run_grid(client, version.run_id, dest / "grid")
    label = f"{reference} (version {version.version}, run {version.run_id})"
    return ExportSource(
        concept_dir=folder,
        label=label,
        sampling=SamplingConfig.model_validate(sampling) if sampling else None,
        metrics=metrics,
        grid=grid,
        grid_origin=(
            f"the generate step's contact sheet of run {version.run_id} "
            f"({grid_artifact_path()}), drawn with the sampling settings above"
            if grid
            else None
        ),
    )


def export_request(
    concept: str,
    config: ExportConfig,
    local: ExportSource,
    model_name: str,
    tracking_uri: str | None,
) -> ExportRequest:
    """The export ``config`` asks for: of ``local`` (the concept folder) or, when ``config``
    names an alias or version, of that registered version of ``model_name`` (downloaded into a
    temporary folder that lives as long as the request)."""
    if not config.registered:
        return ExportRequest(local, concept, config.format, config.folder_name())
    if not tracking_uri:
        raise LookupError(
            f"{config.model_reference(model_name)}: no tracking URI (tracking is disabled), so "
            "the registry cannot be read"
        )
    keep = tempfile.TemporaryDirectory(prefix="magicapture-export-")
    source = registered_source(model_name, config, Path(keep.name), tracking_uri)
    source.keep = keep
    return ExportRequest(source, concept, config.format, config.folder_name())
