"""Which MLflow store a run, the registry, a batch or the summary talk to: one resolution.

:func:`resolve_tracking_uri` is the one rule (``tracking.tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project>/mlflow.db``); :func:`tracking_disabled_by_env`
reads ``MAGICAPTURE_MLFLOW``. The tracking hook, the registry's command line, the batch runner and
``where_to_look`` all ask here.

:func:`tracking` sets MLflow's process-wide tracking and registry URIs for one block and restores
them after. Some MLflow calls read the global URIs even when a client was given one: registering a
version from ``models:/<model_id>`` looks the logged model up in the *global* tracking store, and
``mlflow.pyfunc.load_model("models:/...")`` resolves through the global registry URI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
TRACKING_ENV_VAR = "MAGICAPTURE_MLFLOW"


def tracking_disabled_by_env() -> bool:
    """True when ``MAGICAPTURE_MLFLOW`` is set to 0 / false / off / no."""
    return os.environ.get(TRACKING_ENV_VAR, "1").strip().lower() in {"0", "false", "off", "no"}


def resolve_tracking_uri(project_path: Path, configured: str | None = None) -> str:
    """``configured``, else ``$MLFLOW_TRACKING_URI``, else the project's sqlite database."""
    return (
        configured
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(Path(project_path) / 'mlflow.db').resolve()}"
    )


def tracking_section(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params:tracking`` as a dict (Kedro 1.7 hands typed parameters over as pydantic models)."""
    section = params.get("tracking") or {}
    return section.model_dump() if hasattr(section, "model_dump") else dict(section)


def local_artifact_root(tracking_uri: str, project_path: Path) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts/`` beside a local sqlite database.

    MLflow would otherwise use ``./mlruns`` relative to whatever the working directory is. A remote
    tracking server decides for itself (None).
    """
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        root = database.parent if database.is_absolute() else Path(project_path) / database.parent
        return (root / "mlartifacts").resolve().as_uri()
    return None


@contextlib.contextmanager
def tracking(uri: str | None) -> Iterator[None]:
    """Use ``uri`` as MLflow's tracking and registry URI inside the block (restored after)."""
    import mlflow

    if not uri:
        yield
        return
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    previous = registry_utils._registry_uri
    # set_registry_uri also exports MLFLOW_REGISTRY_URI (for subprocesses): restore that too, or
    # every process started later from this one registers into this block's store.
    previous_env = os.environ.get(REGISTRY_URI_ENV)
    mlflow.set_registry_uri(uri)
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        registry_utils._registry_uri = previous
        if previous_env is None:
            os.environ.pop(REGISTRY_URI_ENV, None)
        else:
            os.environ[REGISTRY_URI_ENV] = previous_env
