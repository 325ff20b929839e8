"""Node of the ``promote`` pipeline; ``registry.promote`` / ``registry.rollback`` do the work."""

from __future__ import annotations

from typing import Any

from magicapture_pipeline.config.tracking import PromoteRequest, RegistryConfig
from magicapture_pipeline.serving.promotion import promote, rollback
from magicapture_pipeline.serving.registration import client_for


def apply_promotion(
    action: str,
    model_name: str,
    model_version: int | None,
    registry: dict[str, Any],
    mlflow_run: dict[str, Any],
) -> dict[str, Any]:
    """Promote ``model_version`` (default: ``@candidate``) to ``@champion``, or roll back.

    Raises:
        PromotionRefused: a gate failed (named in the message) or there is nothing to roll back to;
            the aliases are then left as they were.
    """
    # Parameters arrive as a plain mapping and are validated here: a node parameter typed as a
    # pydantic model is validated by Kedro itself before any hook, which would pre-empt the
    # ParameterCheckHook's one-line-per-problem report (field, value, allowed range).
    request = PromoteRequest(action=action, model_name=model_name, model_version=model_version)
    config = RegistryConfig.model_validate(registry).model_copy(
        update={"model_name": request.model_name}
    )
    client = client_for(mlflow_run["tracking_uri"])
    if request.action == "rollback":
        return rollback(client, request.model_name, config)
    return promote(client, request.model_name, request.model_version, config)
