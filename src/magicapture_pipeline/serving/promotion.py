"""A registered concept's aliases: promotion through metric gates, and rollback.

Promotion moves ``champion`` to a version only when its metric tags (written at registration,
``serving/registration.py``) pass the configured gates; the former champion keeps the alias
``previous`` and ``rollback`` swaps the two back. Nothing changes when a gate fails: the refusal
names every failed gate, with the reason of each unavailable metric (the run's
``reports/unavailable.json``, written by the tracking hook).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from magicapture_pipeline.config.tracking import PromotionGates, RegistryConfig
from magicapture_pipeline.serving.registration import METRIC_TAG, UNAVAILABLE_TAG
from magicapture_pipeline.tracking.logged import UNAVAILABLE_ARTIFACT

logger = logging.getLogger(__name__)


class PromotionRefused(RuntimeError):
    """A promotion gate failed; the message names the gate and the value that failed it."""


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


def aliases(tracking_uri: str, model_name: str) -> dict[str, int] | None:
    """``{alias: version}`` of a registered model, or None when it is not registered (yet)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        model = client.get_registered_model(model_name)
    except Exception:  # noqa: BLE001 - nothing registered yet
        return None
    return {alias: int(number) for alias, number in (model.aliases or {}).items()}
