"""The concept as an MLflow model: the logged model and its registered version.

``register_concept`` logs the exported concept folder (LoRA, one embedding per token,
``concept.json``) as an MLflow pyfunc *inside* the training run, with
``mlflow.models.Model.log(name=..., flavor=mlflow.pyfunc, python_model=<models-from-code file>)``:
the run page lists it under "Logged models" with the run's metrics linked, and the model is rebuilt
from ``serving/entry.py`` at load time (nothing pickled). The package's own code goes with it
(``code_paths``) and its pip requirements are the versions installed here, so
``mlflow models serve`` runs it in any environment that installs those requirements. The logged
model is then registered as a new version of ``magicapture-<concept>`` with the alias
``candidate``; the version carries one tag per metric (``metric.<name>``) and one short tag
``unavailable`` listing the metrics that could not be computed (their reasons are in the run's
``reports/unavailable.json``), and ``exported_step`` / ``export_reason`` from ``concept.json``
(which training step's weights the version holds and why: issue 20's best-step export).

The base Stable Diffusion is referenced, not copied (``serving/base_model.py``: hub id or a
project-relative folder). Sampling settings are ``params:generation``'s ``SamplingConfig`` and
request limits ``params:serving``'s ``ServingLimits``: ``predict`` draws exactly what ``generate``
draws (``serving/concept_model.py``). What happens to a version next is ``serving/promotion.py``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.serving.concept_model import CONCEPT_ARTIFACT, signature
from magicapture_pipeline.tracking.store import sqlite_lock_path, store_lock, tracking_client
from magicapture_pipeline.tracking.uris import tracking

logger = logging.getLogger(__name__)

METRIC_TAG = "metric."
UNAVAILABLE_TAG = "unavailable"  # one tag: comma-separated names of the unavailable metrics
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # magicapture_pipeline/: the code_paths
ENTRY_FILE = PACKAGE_DIR / "serving" / "entry.py"
# What the pyfunc imports when it loads and predicts (serving/, core/generation, core/postprocess,
# config/): pinned to the versions installed here, so another environment rebuilds the same one.
SERVING_PACKAGES = (
    "mlflow",
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "safetensors",
    "huggingface-hub",
    "pillow",
    "numpy",
    "pandas",
    "pydantic",
)


def pip_requirements() -> list[str]:
    """``name==version`` for every package the served model imports, as installed here."""
    pins = []
    for name in SERVING_PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # pragma: no cover - every one is a dependency
            pins.append(name)
    return pins


def client_for(tracking_uri: str | None) -> MlflowClient:
    """An ``MlflowClient`` whose registry is the tracking store (sqlite keeps both); calls to a
    local sqlite store are serialised across processes (``tracking_store``)."""
    return tracking_client(tracking_uri, registry_uri=tracking_uri)


EXPORT_KEYS = ("exported_step", "export_reason")  # concept.json -> version tags (issue 20)


def export_record_tags(concept_dir: str | Path) -> dict[str, str]:
    """``exported_step`` and ``export_reason`` of the concept's ``concept.json`` as version tags
    (absent keys are left out; the reason is cut to the tag limit)."""
    path = Path(concept_dir) / "concept.json"
    concept = json.loads(path.read_text()) if path.is_file() else {}
    return {key: str(concept[key])[:5000] for key in EXPORT_KEYS if concept.get(key) is not None}


def metric_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """``metrics.json`` as version tags: ``metric.<name>`` each, and one ``unavailable`` list."""
    tags = {
        f"{METRIC_TAG}{k}": repr(float(v))
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    names = sorted(metrics.get("unavailable") or {})
    if names:
        tags[UNAVAILABLE_TAG] = ",".join(names)
    return tags


def log_concept_model(
    client: MlflowClient,
    run_id: str,
    concept_dir: str | Path,
    model_config: Mapping[str, Any],
    config: RegistryConfig,
) -> Any:
    """Log the concept as a pyfunc LoggedModel of ``run_id`` (models from code, no pickle).

    Returns:
        MLflow's ``ModelInfo`` (``model_id``, ``model_uri`` ``models:/<model_id>``).
    """
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id, name=config.artifact_path, source_run_id=run_id
    )
    with tracking(client.tracking_uri), warnings.catch_warnings():
        # no input_example: it would run predict (load SD, sample) at logging time; no type
        # hints on predict: the logged signature is the schema
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
        info = Model.log(
            artifact_path=None,  # MLflow 3: `name` replaces it
            name=config.artifact_path,
            flavor=mlflow.pyfunc,
            flavor_name="python_function",
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(ENTRY_FILE),
            artifacts={CONCEPT_ARTIFACT: str(concept_dir)},
            code_paths=[str(PACKAGE_DIR)],
            model_config=dict(model_config),
            signature=signature(),
            pip_requirements=pip_requirements(),
        )
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return info


def register_concept(
    concept_dir: str | Path,
    model_config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    *,
    run_id: str,
    tracking_uri: str | None,
    config: RegistryConfig,
) -> dict[str, Any]:
    """Log the concept in ``run_id``, register it as a new version and alias it ``candidate``.

    Args:
        concept_dir: the exported concept folder (LoRA, embeddings, ``concept.json``).
        model_config: the pyfunc's config (``base_model``, ``base_model_kind``, ``sampling``,
            ``limits``, ``concept_name``, ``commit``; see ``serving/concept_model.py``).
        metrics: ``metrics.json`` (numeric top-level keys + ``unavailable``).
        run_id: the MLflow run the model is logged in.
        tracking_uri: MLflow tracking (and registry) URI.
        config: the registry settings.

    Returns:
        ``{"model_name", "version", "aliases", "run_id", "model_id", "source", "tracking_uri",
        "metrics"}``.
    """
    # Model.log and version creation also go through MLflow's global client: the whole
    # registration holds the store's lock (local sqlite; nothing for a server) with a plain client.
    plain = getattr(client_for(tracking_uri), "wrapped", None) or client_for(tracking_uri)
    with store_lock(sqlite_lock_path(tracking_uri)), tracking(tracking_uri):
        return _register(plain, concept_dir, model_config, metrics, run_id, config)


def _register(
    client: MlflowClient,
    concept_dir: str | Path,
    model_config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    run_id: str,
    config: RegistryConfig,
) -> dict[str, Any]:
    info = log_concept_model(client, run_id, concept_dir, model_config, config)
    try:
        client.create_registered_model(
            config.model_name, description="MagiCapture concept (LoRA + [V1]/[V2] embeddings)."
        )
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise
    tags = metric_tags(metrics) | export_record_tags(concept_dir)
    tags |= {"base_model": str(model_config["base_model"])}
    tags |= {"base_model_kind": str(model_config.get("base_model_kind", "hub_id"))}
    version = client.create_model_version(
        config.model_name,
        source=info.model_uri,
        run_id=run_id,
        tags=tags,
        model_id=info.model_id,
    )
    client.set_registered_model_alias(config.model_name, config.candidate_alias, version.version)
    logger.info(
        "Registered %s version %s as @%s (logged model %s)",
        config.model_name,
        version.version,
        config.candidate_alias,
        info.model_id,
    )
    return {
        "model_name": config.model_name,
        "version": int(version.version),
        "aliases": [config.candidate_alias],
        "run_id": run_id,
        "model_id": info.model_id,
        "source": info.model_uri,
        "tracking_uri": client.tracking_uri,
        "metrics": {
            k.removeprefix(METRIC_TAG): float(v)
            for k, v in tags.items()
            if k.startswith(METRIC_TAG)
        },
    }
