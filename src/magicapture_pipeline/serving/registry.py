"""The concept as an MLflow model: logged model, registration, alias promotion and rollback.

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
``reports/unavailable.json``).

The base Stable Diffusion is referenced, not copied (``serving/base_model.py``: hub id or a
project-relative folder). Sampling settings are ``params:generation``'s ``SamplingConfig`` and
request limits ``params:serving``'s ``ServingLimits``: ``predict`` draws exactly what ``generate``
draws (``serving/concept_model.py``).

Promotion moves ``champion`` to a version only when its metric tags pass the configured gates; the
former champion keeps the alias ``previous`` and ``rollback`` swaps the two back. Both are also a
one-line command::

    kedro run --pipelines=promote --env=demo [--params=model_version=3]
    kedro run --pipelines=promote --env=demo --params=action=rollback
    python -m magicapture_pipeline.serving.registry promote magicapture-demo --env demo \
        [--version 3]
    python -m magicapture_pipeline.serving.registry rollback magicapture-demo

``models:/<name>@champion`` resolves through the tracking URI (``$MLFLOW_TRACKING_URI``, default
``sqlite:///mlflow.db`` in the project root).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from magicapture_pipeline.config.tracking import PromotionGates, RegistryConfig
from magicapture_pipeline.serving.concept_model import (
    CONCEPT_ARTIFACT,
    decode_image,
    encode_image,
    signature,
)
from magicapture_pipeline.tracking.store import sqlite_lock_path, store_lock, tracking_client
from magicapture_pipeline.tracking.uris import tracking

logger = logging.getLogger(__name__)

__all__ = ["decode_image", "encode_image", "promote", "register_concept", "rollback"]

METRIC_TAG = "metric."
UNAVAILABLE_TAG = "unavailable"  # one tag: comma-separated names of the unavailable metrics
UNAVAILABLE_ARTIFACT = "reports/unavailable.json"  # their reasons, in the run (hooks.py)
PACKAGE_DIR = Path(__file__).resolve().parent
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


class PromotionRefused(RuntimeError):
    """A promotion gate failed; the message names the gate and the value that failed it."""


# --------------------------------------------------------------------------- registration


def client_for(tracking_uri: str | None) -> MlflowClient:
    """An ``MlflowClient`` whose registry is the tracking store (sqlite keeps both); calls to a
    local sqlite store are serialised across processes (``tracking_store``)."""
    return tracking_client(tracking_uri, registry_uri=tracking_uri)


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
    tags = metric_tags(metrics)
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


# --------------------------------------------------------------------------- promotion


def version_metrics(tags: Mapping[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """The ``metric.*`` tags of a model version, and its unavailable metrics (name -> reason).

    Versions carry one ``unavailable`` tag listing names; versions registered before that carry
    one ``unavailable.<name>`` tag per metric with its reason.
    """
    metrics = {
        k.removeprefix(METRIC_TAG): float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)
    }
    unavailable = {
        k.removeprefix(f"{UNAVAILABLE_TAG}."): v
        for k, v in tags.items()
        if k.startswith(f"{UNAVAILABLE_TAG}.")
    }
    for name in filter(None, tags.get(UNAVAILABLE_TAG, "").split(",")):
        unavailable.setdefault(name, f"see {UNAVAILABLE_ARTIFACT} of the run")
    return metrics, unavailable


def _unavailable_reasons(client: MlflowClient, run_id: str | None) -> dict[str, str]:
    """The run's ``reports/unavailable.json`` (name -> reason), or {} when it has none."""
    if not run_id:
        return {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, UNAVAILABLE_ARTIFACT, tmp)
            return dict(json.loads(Path(local).read_text()))
    except Exception:  # noqa: BLE001 - the reasons are a courtesy in the refusal message
        return {}


def failed_gates(
    metrics: Mapping[str, float], unavailable: Mapping[str, str], gates: PromotionGates
) -> list[str]:
    """One message per failed gate, naming it (empty: the version may become champion)."""
    failures = []
    for name in gates.required_metrics:
        if name not in metrics:
            why = f" (unavailable: {unavailable[name]})" if name in unavailable else ""
            failures.append(f"gate required_metrics: '{name}' is missing{why}")
    for name, bound in gates.min_metrics.items():
        if bound is None:
            continue
        if name not in metrics:
            failures.append(f"gate min_metrics.{name}: '{name}' is missing")
        elif metrics[name] < bound:
            failures.append(f"gate min_metrics.{name}: {name}={metrics[name]:.4g} < {bound}")
    for name, bound in gates.max_metrics.items():
        if bound is None:
            continue
        if name not in metrics:
            failures.append(f"gate max_metrics.{name}: '{name}' is missing")
        elif metrics[name] > bound:
            failures.append(f"gate max_metrics.{name}: {name}={metrics[name]:.4g} > {bound}")
    trained = metrics.get("identity_loss_trained")
    if not gates.allow_without_identity_loss and trained != 1.0:
        state = "missing" if trained is None else f"{trained:g}"
        failures.append(
            f"gate identity_loss: the concept did not train with the identity loss (Eq. 7; "
            f"identity_loss_trained={state}); set registry.gates.allow_without_identity_loss: "
            "true to promote it anyway"
        )
    return failures


def _alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(
    client: MlflowClient, model_name: str, version: int | None, config: RegistryConfig
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` (default: the ``candidate``) if it passes the gates.

    The former champion keeps the alias ``previous``. Nothing changes when a gate fails.

    Raises:
        PromotionRefused: naming every failed gate.
    """
    if version is None:
        version = _alias_version(client, model_name, config.candidate_alias)
        if version is None:
            raise PromotionRefused(f"{model_name} has no @{config.candidate_alias} version")
    details = client.get_model_version(model_name, str(version))
    metrics, unavailable = version_metrics(details.tags)
    unavailable |= {
        k: v for k, v in _unavailable_reasons(client, details.run_id).items() if k in unavailable
    }
    failures = failed_gates(metrics, unavailable, config.gates)
    if failures:
        note = f" [{config.gates.note}]" if config.gates.note else ""
        raise PromotionRefused(
            f"{model_name} version {version} not promoted: " + "; ".join(failures) + note
        )
    old = _alias_version(client, model_name, config.champion_alias)
    if old is not None and old != int(version):
        client.set_registered_model_alias(model_name, config.previous_alias, str(old))
    client.set_registered_model_alias(model_name, config.champion_alias, str(version))
    logger.info(
        "%s: @%s -> version %s (previous: %s)", model_name, config.champion_alias, version, old
    )
    return {
        "action": "promote",
        "model_name": model_name,
        "champion": int(version),
        "previous": old if old != int(version) else None,
        "metrics": metrics,
    }


def rollback(client: MlflowClient, model_name: str, config: RegistryConfig) -> dict[str, Any]:
    """Give ``champion`` back to the ``previous`` version; the demoted one becomes ``previous``.

    Raises:
        PromotionRefused: when there is no ``previous`` version to return to.
    """
    previous = _alias_version(client, model_name, config.previous_alias)
    if previous is None:
        raise PromotionRefused(
            f"{model_name} has no @{config.previous_alias} version to roll back to"
        )
    current = _alias_version(client, model_name, config.champion_alias)
    client.set_registered_model_alias(model_name, config.champion_alias, str(previous))
    if current is not None and current != previous:
        client.set_registered_model_alias(model_name, config.previous_alias, str(current))
    logger.info(
        "%s: rolled @%s back from %s to %s", model_name, config.champion_alias, current, previous
    )
    return {
        "action": "rollback",
        "model_name": model_name,
        "champion": previous,
        "previous": current,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m magicapture_pipeline.serving.registry {promote,rollback} MODEL [--version N]``.
    """
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.serving.registry")
    parser.add_argument("action", choices=["promote", "rollback"])
    parser.add_argument("model_name")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--env", default="base", help="Kedro env whose registry gates apply")
    args = parser.parse_args(argv)
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from magicapture_pipeline.tracking.hook import resolve_tracking_uri

    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=args.env) as session:
        params = session.load_context().params
    # Kedro 1.7 hands typed parameters (nodes annotated with a pydantic model) over as models
    config = RegistryConfig.model_validate(params.get("registry") or {})
    config = config.model_copy(update={"model_name": args.model_name})
    tracking = params.get("tracking") or {}
    tracking = tracking.model_dump() if hasattr(tracking, "model_dump") else tracking
    client = client_for(resolve_tracking_uri(project, tracking.get("tracking_uri")))
    result = (
        promote(client, args.model_name, args.version, config)
        if args.action == "promote"
        else rollback(client, args.model_name, config)
    )
    print(json.dumps(result, indent=2))  # noqa: T201 - a command-line answer


if __name__ == "__main__":
    main()
