"""Validation during training in MLflow (issue 20): each validation's images with their step, so
the run's image slider walks through training, and the history rows as step metrics.

``core.training.validation.Validator`` returns ``images`` (``{step: {name: PIL image}}``) and
``history`` (one row per validation); core stays MLflow-free and this module logs them. In a
Kedro run the tracking hook logs the ``<stage>_validation_images`` partitions
(``step_<n>/<name>``, :func:`images_by_step`) and sets the exported step and its reason as run
tags (:func:`export_tags`) from the ``<stage>_validation_history`` table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from magicapture_pipeline.tracking.logged import MAX_TAG_LENGTH, clipped, history_metrics

__all__ = ["export_tags", "images_by_step", "log_validation"]


def images_by_step(partitions: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """``core.training.validation.images_by_step``, imported when called: the tracking hook is
    imported by ``settings.py`` for every Kedro command, and ``core.training`` imports torch."""
    from magicapture_pipeline.core.training.validation import images_by_step as by_step

    return by_step(partitions)


def log_validation(
    client: Any,
    run_id: str,
    prefix: str,
    history: Sequence[Mapping[str, Any]],
    images: Mapping[int, Mapping[str, Any]],
) -> int:
    """Log ``history`` as ``<prefix>/<metric>`` at each validation's step and every image as
    ``<prefix>/<name>`` with its step (``MlflowClient.log_image``). Returns the images logged."""
    if history:
        import pandas as pd

        frame = pd.DataFrame(list(history))
        client.log_batch(run_id, metrics=history_metrics(prefix, frame))
    logged = 0
    for step in sorted(images):
        for name, image in images[step].items():
            client.log_image(run_id, image, key=f"{prefix}/{name}", step=int(step))
            logged += 1
    return logged


def export_tags(prefix: str, history: Any) -> dict[str, str]:
    """``<prefix>.exported_step`` and ``<prefix>.export_reason`` from a validation history's
    row marked ``exported`` (empty when none is)."""
    if history is None or "exported" not in getattr(history, "columns", ()):
        return {}
    marked = history[history["exported"].fillna(0).astype(int) == 1]
    if marked.empty:
        return {}
    import pandas as pd  # a history is a DataFrame: pandas is loaded already

    row = marked.iloc[-1]
    reason = row.get("export_reason", "")
    return {
        f"{prefix}.exported_step": str(int(row["step"])),
        f"{prefix}.export_reason": clipped("" if pd.isna(reason) else str(reason), MAX_TAG_LENGTH),
    }
