"""Node of the ``promote`` pipeline; ``registry.promote`` / ``registry.rollback`` do the work."""

from __future__ import annotations

from typing import Any

from magicapture_pipeline.config.tracking import PromoteRequest, RegistryConfig
from magicapture_pipeline.registry import client_for, promote, rollback


def apply_promotion(
    action: str,
    model_name: str,
    model_version: int | None,
    registry: RegistryConfig,
    mlflow_run: dict[str, Any],
) -> dict[str, Any]:
    """Promote ``model_version`` (default: ``@candidate``) to ``@champion``, or roll back.

    Raises:
        PromotionRefused: a gate failed (named in the message) or there is nothing to roll back to;
            the aliases are then left as they were.
    """
    request = PromoteRequest(action=action, model_name=model_name, model_version=model_version)
    config = RegistryConfig.model_validate(registry).model_copy(
        update={"model_name": request.model_name}
    )
    client = client_for(mlflow_run["tracking_uri"])
    if request.action == "rollback":
        return rollback(client, request.model_name, config)
    return promote(client, request.model_name, request.model_version, config)
