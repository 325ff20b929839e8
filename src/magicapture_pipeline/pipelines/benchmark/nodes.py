"""Nodes of the ``benchmark`` pipeline: baselines and ablations trained on the same inputs, sampled
with the same generation settings and scored by the same evaluation functions (issue 4 section 4).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from PIL import Image

from magicapture_pipeline.config.benchmark import BenchmarkConfig
from magicapture_pipeline.config.generation import (
    EvaluationConfig,
    GenerationConfig,
    PostprocessConfig,
)
from magicapture_pipeline.core.evaluation.baselines import benchmark as run_all_variants
from magicapture_pipeline.core.faces.face_set import FaceSet
from magicapture_pipeline.pipelines.shared import base_model_path


def run_benchmark(  # noqa: PLR0917 - Kedro passes node inputs positionally
    training_set: dict[str, Any],
    face_crops: dict[str, Any],
    face_masks: dict[str, Any],
    base_model: dict[str, Any],
    stage_one: dict[str, Any],
    stage_two: dict[str, Any],
    generation: dict[str, Any],
    postprocess: dict[str, Any],
    evaluation: dict[str, Any],
    benchmark: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, str, dict[str, Image.Image]]:
    """Train, sample and score every variant; build the Table-1-shaped comparison.

    Returns:
        ``benchmark_results`` (everything per variant), ``benchmark_table_csv``,
        ``benchmark_table_md`` and ``benchmark_grids`` (one contact sheet per scored variant).
    """
    report, rows, markdown, grids = run_all_variants(
        FaceSet.from_catalog(training_set, face_crops, face_masks),
        base=base_model_path(base_model),
        stage_one=stage_one,
        stage_two=stage_two,
        generation=GenerationConfig.model_validate(generation),
        postprocess=PostprocessConfig(**postprocess),
        evaluation=EvaluationConfig(**evaluation),
        config=BenchmarkConfig(**benchmark),
    )
    return report, pd.DataFrame(rows), markdown, grids
