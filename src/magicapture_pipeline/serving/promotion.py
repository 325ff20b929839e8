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


# The evaluate step's count of held-out source photos (core/evaluation/scoring.py).
HELDOUT_PHOTOS = "heldout_photos"


def gate_metric(name: str, metrics: Mapping[str, float], gates: PromotionGates) -> str:
    """The metric a gate on ``name`` reads: a CSIM gate reads the held-out CSIM
    (``<name>_heldout``) when the run held a source photo out and ``identity_from_heldout`` is
    on; anything else reads ``name`` itself."""
    if (
        gates.identity_from_heldout
        and name.startswith("csim_")
        and not name.endswith("_heldout")
        and metrics.get(HELDOUT_PHOTOS, 0.0) > 0
    ):
        return f"{name}_heldout"
    return name


def gate_readings(
    metrics: Mapping[str, float], gates: PromotionGates
) -> dict[str, str]:
    """Which metric each gate reads, and on which photos (``{gate: "csim_x_heldout (held-out
    photos)"}``), for the refusal message and the promotion record."""
    names = [*gates.required_metrics, *gates.min_metrics, *gates.max_metrics]
    out = {}
    for name in dict.fromkeys(names):
        read = gate_metric(name, metrics, gates)
        if read != name:
            out[name] = f"{read} (held-out photos)"
        elif name.startswith("csim_") and not name.endswith("_heldout"):
            out[name] = f"{name} (training photos: no held-out photo)"
        else:
            out[name] = name
    return out


def failed_gates(
    metrics: Mapping[str, float], unavailable: Mapping[str, str], gates: PromotionGates
) -> list[str]:
    """One message per failed gate, naming it and the metric it read (empty: the version may
    become champion)."""
    failures = []
    read = gate_readings(metrics, gates)
    for gate in gates.required_metrics:
        name, which = gate_metric(gate, metrics, gates), _which(read[gate])
        if name not in metrics:
            why = f" (unavailable: {unavailable[name]})" if name in unavailable else ""
            failures.append(f"gate required_metrics: '{name}' is missing{why}{which}")
    for bounds, verb, fails in (
        (gates.min_metrics, "<", lambda v, b: v < b),
        (gates.max_metrics, ">", lambda v, b: v > b),
    ):
        kind = "min_metrics" if verb == "<" else "max_metrics"
        for gate, bound in bounds.items():
            if bound is None:
                continue
            name, which = gate_metric(gate, metrics, gates), _which(read[gate])
            if name not in metrics:
                failures.append(f"gate {kind}.{gate}: '{name}' is missing{which}")
            elif fails(metrics[name], bound):
                failures.append(
                    f"gate {kind}.{gate}: {name}={metrics[name]:.4g} {verb} {bound}{which}"
                )
    trained = metrics.get("identity_loss_trained")
    if not gates.allow_without_identity_loss and trained != 1.0:
        state = "missing" if trained is None else f"{trained:g}"
        failures.append(
            f"gate identity_loss: the concept did not train with the identity loss (Eq. 7; "
            f"identity_loss_trained={state}); set registry.gates.allow_without_identity_loss: "
            "true to promote it anyway"
        )
    return failures


def _which(reading: str) -> str:
    """`` [held-out photos]`` / `` [training photos: ...]`` for a CSIM gate, else nothing."""
    return f" [{reading.split(' (', 1)[1].rstrip(')')}]" if " (" in reading else ""


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
        "gates_read": gate_readings(metrics, config.gates),
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
