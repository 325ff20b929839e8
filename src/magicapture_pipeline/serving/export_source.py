"""A registered concept version as an export source (issue 22): its concept folder, the
sampling settings it was registered with and the metrics of the run that trained it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicapture_pipeline.serving.concept_model import CONCEPT_ARTIFACT
from magicapture_pipeline.tracking.store import tracking_client
from magicapture_pipeline.tracking.uris import tracking


def registered_concept(
    model_name: str, alias: str, dest: Path, tracking_uri: str
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Download ``models:/<model_name>@<alias>`` into ``dest``.

    Returns the concept folder, the version's ``model_config["sampling"]`` (empty when it was
    registered without one) and its run's metrics (``{name: value}``, MLflow's latest values).

    Raises:
        LookupError: no such model or alias, naming both.
    """
    import mlflow.artifacts
    import yaml
    from mlflow.exceptions import MlflowException

    client = tracking_client(tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        raise LookupError(f"models:/{model_name}@{alias}: no such version ({error})") from error
    with tracking(tracking_uri):
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}@{alias}", dst_path=str(dest)
            )
        )
    folder = local / "artifacts" / CONCEPT_ARTIFACT
    if not folder.is_dir():
        raise LookupError(f"models:/{model_name}@{alias}: no '{CONCEPT_ARTIFACT}' artifact")
    mlmodel_file = local / "MLmodel"
    mlmodel = yaml.safe_load(mlmodel_file.read_text()) if mlmodel_file.is_file() else {}
    # MLflow writes a pyfunc's model_config under flavors.python_function.config
    config = ((mlmodel or {}).get("flavors", {}).get("python_function", {})).get("config")
    metrics = dict(client.get_run(version.run_id).data.metrics) if version.run_id else {}
    return folder, dict((config or {}).get("sampling") or {}), metrics
