"""Validation during training in MLflow (issue 20): each validation's images with their step, so
the run's image slider walks through training, and the history rows as step metrics.

``core.training.validation.Validator`` returns ``images`` (``{step: {name: PIL image}}``) and
``history`` (one row per validation); core stays MLflow-free and this module logs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from magicapture_pipeline.tracking.logged import history_metrics


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
        frame = pd.DataFrame(list(history))
        client.log_batch(run_id, metrics=history_metrics(prefix, frame))
    logged = 0
    for step in sorted(images):
        for name, image in images[step].items():
            client.log_image(run_id, image, key=f"{prefix}/{name}", step=int(step))
            logged += 1
    return logged
