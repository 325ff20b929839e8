"""Nodes of the ``benchmark`` pipeline: baselines and ablations trained on the same inputs, sampled
with the same generation settings and scored by the same evaluation functions (issue 4 section 4).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from PIL import Image

from magicapture_pipeline.config.generation import (
    BenchmarkConfig,
    EvaluationConfig,
    GenerationConfig,
    PostprocessConfig,
)
from magicapture_pipeline.core.evaluation.baselines import run_variants
from magicapture_pipeline.core.evaluation.comparison import (
    comparison_markdown,
    comparison_rows,
    unavailable_reasons,
)
from magicapture_pipeline.core.evaluation.metrics import load_loss_recognizer
from magicapture_pipeline.core.evaluation.protocol import load_metric_models
from magicapture_pipeline.pipelines.shared import base_model_path, inputs_from_preprocess

logger = logging.getLogger(__name__)


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
    config = BenchmarkConfig(**benchmark)
    updates = {
        k: v
        for k, v in (
            ("images_per_prompt", config.images_per_prompt),
            ("num_inference_steps", config.num_inference_steps),
        )
        if v is not None
    }
    gen_config = GenerationConfig.model_validate(generation).model_copy(update=updates)
    post_config = PostprocessConfig(**postprocess)
    eval_config = EvaluationConfig(**evaluation)
    data = inputs_from_preprocess(face_crops, face_masks, training_set)
    base = base_model_path(base_model)
    try:
        from magicapture_pipeline.core.training import examples_from_training_set

        examples = examples_from_training_set(training_set, face_crops, face_masks)
    except (ValueError, KeyError) as error:
        logger.warning("Benchmark has no training examples: %s", error)
        examples = []
    cap = {"max_steps": config.max_steps} if config.max_steps is not None else {}
    models = load_metric_models(eval_config)
    loss = load_loss_recognizer(stage_two.get("identity"))
    if loss is not None and loss[0] is not None and models.faces is not None:
        loss[0].landmark_finder = models.faces.landmarks5
    try:
        results, grids = run_variants(
            config.variants,
            examples=examples,
            base=base,
            stage_one=stage_one,
            stage_two=stage_two,
            cap=cap,
            generation=gen_config,
            postprocess=post_config,
            models=models,
            data=data,
            mask_face=eval_config.mask_face_for_style,
            steps_fixed=config.num_inference_steps is not None,
            loss_recognizer=loss,
        )
    finally:
        models.close()
    rows = comparison_rows(results)
    report = {
        "variants": results,
        "generation": gen_config.model_dump(),
        "paper_note": config.paper_note,
    }
    return (
        report,
        pd.DataFrame(rows),
        comparison_markdown(rows, config.paper_note, unavailable_reasons(results)),
        grids,
    )
