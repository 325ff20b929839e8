"""MLflow's process-wide tracking and registry URIs, set for one block and restored after.

Some MLflow calls read the global URIs even when a client was given one: registering a version
from ``models:/<model_id>`` looks the logged model up in the *global* tracking store, and
``mlflow.pyfunc.load_model("models:/...")`` resolves through the global registry URI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"


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
