"""Helpers the nodes of several pipelines share: the base model's path, validation during training.

Not a pipeline (a module, not a package): the pipeline registry skips it. The preprocessed face
set is read by :class:`magicapture_pipeline.core.faces.face_set.FaceSet`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from magicapture_pipeline.config.generation import EvaluationConfig, GenerationConfig
from magicapture_pipeline.core.faces.face_set import EvaluationInputs, FaceSet
from magicapture_pipeline.core.training.validation import EXPORT_COLUMNS, HISTORY_COLUMNS
from magicapture_pipeline.core.training.validation_scoring import (
    ValidationSetup,
    validation_setup,
)


def base_model_path(base_model: dict[str, Any] | str) -> str:
    """The folder or hub id recorded by the ``base_model`` dataset."""
    return base_model["path"] if isinstance(base_model, dict) else str(base_model)


def stage_validation(  # noqa: PLR0913 (the face set's three datasets and three sections)
    stage: str,
    validation: Any,
    training_set: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    generation: dict[str, Any],
    evaluation: dict[str, Any],
) -> ValidationSetup:
    """Validation of a training stage (``<stage>.validation``), sampled with ``generate``'s
    settings (``params:generation``, its LoRA scales included) and scored by the ``evaluate``
    protocol (``params:evaluation``) against the face set's held-out and training photos."""
    inputs = None
    if validation.every_n_steps > 0:
        face_set = FaceSet.from_catalog(training_set, face_crops, face_masks)
        inputs = EvaluationInputs.from_face_set(face_set)
    return validation_setup(
        validation,
        GenerationConfig(**(generation or {})),
        EvaluationConfig(**(evaluation or {})),
        inputs,
        stage,
    )


def validation_history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The ``<stage>_validation_history`` table (its columns even when no validation ran)."""
    columns = [*HISTORY_COLUMNS, *EXPORT_COLUMNS]
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=[*columns, *(c for c in frame.columns if c not in columns)])
