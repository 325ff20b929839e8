"""Baselines and ablations in one harness (paper: Experiments, supplement; issue 4 section 4).

Every variant is trained on the same accepted inputs by this project's own trainers
(:mod:`core.training`), sampled with the same generation settings (:mod:`core.generation`) and
scored by the same evaluation (:mod:`core.metrics`), so the rows of the comparison differ only in
the method. What each baseline is, in terms of those trainers, is stated in ``METHOD_NOTES`` and
written next to its numbers.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from magicapture_pipeline.config.benchmark import BenchmarkConfig, VariantConfig
from magicapture_pipeline.config.generation import (
    EvaluationConfig,
    GenerationConfig,
    PostprocessConfig,
)
from magicapture_pipeline.config.merge import deep_merge
from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig
from magicapture_pipeline.core.evaluation.comparison import (
    comparison_markdown,
    comparison_rows,
    unavailable_reasons,
)
from magicapture_pipeline.core.evaluation.dreambooth import PriorInputs, prior_inputs
from magicapture_pipeline.core.evaluation.metrics import load_loss_recognizer
from magicapture_pipeline.core.evaluation.protocol import load_metric_models
from magicapture_pipeline.core.evaluation.rows import (
    METHOD_NOTES,
    trains_masked,
    variant_generation,
    whole_image_examples,
)
from magicapture_pipeline.core.evaluation.scoring import score_images
from magicapture_pipeline.core.faces.face_set import EvaluationInputs, FaceSet
from magicapture_pipeline.core.generation import export as concept_io
from magicapture_pipeline.core.generation.postprocess import mark, provenance_record
from magicapture_pipeline.core.generation.sampling import make_grid, run_generation
from magicapture_pipeline.core.generation.steps import restore_and_upscale
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageOneTrainer, StageTwoTrainer
from magicapture_pipeline.core.training.examples import examples_from_face_set
from magicapture_pipeline.core.training.prior import PriorPreservationTrainer

logger = logging.getLogger(__name__)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# Settings every benchmark run shares: no checkpoints, no resume, no heatmaps.
_QUIET = {"checkpoint_every": 0, "resume": False, "checkpoint_dir": None}

def train_variant(
    variant: VariantConfig,
    *,
    examples: list[Any],
    base: str,
    stage_one: dict[str, Any],
    stage_two: dict[str, Any],
    out_dir: Path,
    prior: PriorInputs | None = None,
) -> tuple[Path | None, str | None]:
    """Train one variant into a concept folder, or say why it was not run (``prior``: the
    DreamBooth row's class images, trained with the prior loss)."""
    if not examples:
        return None, "not run: no accepted training images (training_set / face_crops / masks)"
    if not trains_masked(variant):
        examples = whole_image_examples(examples)
    s1 = StageOneConfig(**{**stage_one, **_QUIET})
    s2 = StageTwoConfig(**{**stage_two, **_QUIET, "heatmap_every": 0})
    metadata = {"base_model": base, "benchmark_variant": variant.name, "method": variant.method}
    embeddings = None
    if variant.method in ("magicapture", "textual_inversion"):
        first = StageOneTrainer(load_components(base), examples, s1)
        first.train(progress=False)
        embeddings = first.result().embeddings
    if variant.method == "textual_inversion":
        info = {**metadata, "steps": s1.max_steps, "family": first.family}
        concept_io.export(out_dir, embeddings, None, None, info)
        return out_dir, None
    if prior is not None:
        second = PriorPreservationTrainer(
            load_components(base), examples, s2, embeddings, class_images=prior.images,
            class_prompt=prior.prompt, prior_loss_weight=prior.weight,
        )
    else:
        second = StageTwoTrainer(load_components(base), examples, s2, embeddings)
    second.train(progress=False)
    result = second.result(base_model=base)
    concept_io.export(
        out_dir,
        result.embeddings,
        result.unet_lora,
        result.text_encoder_lora,
        {**result.metadata, **metadata},
        text_encoder_2_lora=result.text_encoder_2_lora,
    )
    return out_dir, None


@dataclass(frozen=True)
class _Rows:
    """What every row of one benchmark run shares: the training inputs and stage sections, the
    sampling and scoring settings (``run_variants``' arguments, passed once)."""

    examples: list[Any]
    base: str
    stage_one: dict[str, Any]
    stage_two: dict[str, Any]
    cap: dict[str, Any]
    generation: GenerationConfig
    postprocess: PostprocessConfig
    models: Any
    data: EvaluationInputs
    mask_face: bool
    steps_fixed: bool = False
    loss_recognizer: tuple[Any, str | None] | None = None
    class_images: tuple[str | None, int | None] = (None, None)


def _score_variant(
    variant: VariantConfig, concept: Path, rows: _Rows, models: Any
) -> tuple[dict[str, Any], Image.Image, dict[str, Any]]:
    base, postprocess = rows.base, rows.postprocess
    generation = variant_generation(rows.generation, variant, rows.steps_fixed)
    run = run_generation(base, concept, generation)
    images = {item.key: item.image for item in run.images}
    sampling = {
        "lora_scale_unet": generation.lora_scale_unet,
        "lora_scale_text_encoder": generation.lora_scale_text_encoder,
        "masked_losses": trains_masked(variant),
        "guidance_scale": generation.guidance_scale,
        "num_inference_steps": generation.num_inference_steps,
        "scheduler": generation.scheduler,
    }
    if variant.postprocess:
        faces = getattr(models, "faces", None)
        result = restore_and_upscale(images, postprocess, faces, progress=False)
        images = result.images
        sampling["postprocess_steps"] = sorted({s for v in result.steps.values() for s in v})
        sampling["postprocess_unavailable"] = dict(result.unavailable)
    evaluation = score_images(models, images, rows.data, rows.mask_face)
    grid = make_grid(list(images.values()), list(images), generation.grid_columns)
    return evaluation.as_json(), grid, sampling


def _trains_with_identity_loss(
    variant: VariantConfig, stage_two: dict[str, Any], by_name: dict[str, VariantConfig]
) -> bool:
    """Whether the row's concept trained stage two with the identity loss switched on."""
    if variant.concept_from is not None and variant.concept_from in by_name:
        variant = by_name[variant.concept_from]
    if variant.method == "textual_inversion":
        return False
    identity = deep_merge(stage_two, variant.stage_two).get("identity") or {}
    return identity.get("mode", "single_pass") != "off"


def _train_or_reuse(
    variant: VariantConfig, rows: _Rows, trained: dict[str, Path], work: Path, prior: Any = None
) -> tuple[Path | None, str | None]:
    if variant.concept_from is not None:
        concept = trained.get(variant.concept_from)
        if concept is None:
            return None, f"not run: variant {variant.concept_from!r} has no trained concept"
        return concept, None
    try:
        return train_variant(
            variant,
            examples=rows.examples,
            base=rows.base,
            stage_one={**deep_merge(rows.stage_one, variant.stage_one), **rows.cap},
            stage_two={**deep_merge(rows.stage_two, variant.stage_two), **rows.cap},
            out_dir=work / _slug(variant.name),
            prior=prior() if prior is not None else None,
        )
    except Exception as error:  # noqa: BLE001 - one failing variant must not lose the table
        logger.exception("Benchmark variant %s failed", variant.name)
        return None, f"failed: {type(error).__name__}: {error}"


def run_variants(
    variants: list[VariantConfig], rows: _Rows
) -> tuple[list[dict[str, Any]], dict[str, Image.Image]]:
    """Train (or reuse), sample and score every variant in order.

    ``rows.loss_recognizer`` (``core.metrics.load_loss_recognizer``) is handed to the scoring of
    the rows that train with the identity loss, so their CSIM is labelled ``_same_as_loss`` when
    the recognizer is that network; rows without the loss are scored plainly.
    ``rows.class_images``: the class-image cache folder and count cap of prior-preserving rows
    (``params:benchmark``).

    Returns:
        One result entry per variant (status, metrics, timings, method note) and one contact
        sheet per scored variant, keyed by the variant's slug.
    """
    by_name = {v.name: v for v in variants}
    results: list[dict[str, Any]] = []
    grids: dict[str, Image.Image] = {}
    trained: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="magicapture-benchmark-") as work:
        for variant in variants:
            entry: dict[str, Any] = {
                "name": variant.name,
                "method": variant.method,
                "paper": variant.paper.model_dump(),
                "metrics": None,
                "method_note": METHOD_NOTES[variant.method],
                "settings_source": variant.settings_source,
            }
            start = time.perf_counter()

            def prior(variant: VariantConfig = variant, entry: dict[str, Any] = entry) -> Any:
                if not rows.examples:  # train_variant says why the row is not run
                    return None
                found = prior_inputs(
                    variant, base=rows.base, resolution=int(rows.examples[0].image.shape[-1]),
                    generation=variant_generation(rows.generation, variant, rows.steps_fixed),
                    root=rows.class_images[0], count_cap=rows.class_images[1],
                )
                entry["class_images"] = found.report
                return found

            concept, reason = _train_or_reuse(
                variant,
                rows,
                trained,
                Path(work),
                prior=prior if variant.prior_preservation is not None else None,
            )
            entry["train_seconds"] = round(time.perf_counter() - start, 2)
            if concept is None:
                entry["status"] = reason
                logger.warning("Benchmark variant %s %s", variant.name, reason)
            else:
                trained[variant.name] = concept
                with_loss = _trains_with_identity_loss(variant, rows.stage_two, by_name)
                recognizer = rows.loss_recognizer if with_loss else None
                models = replace(rows.models, loss_recognizer=recognizer)
                metrics, grid, sampling = _score_variant(variant, concept, rows, models)
                entry["metrics"], entry["status"] = metrics, "scored"
                entry["sampling"] = sampling
                grids[_slug(variant.name)] = mark(
                    grid,
                    provenance_record(
                        concept=f"{rows.generation.concept_name}:{variant.name}",
                        base_model=rows.base,
                        prompt=None,
                        seed=rows.generation.seed,
                        stage="benchmark_contact_sheet",
                    ),
                    None,
                )
            results.append(entry)
    return results, grids


def benchmark(  # noqa: PLR0913 - one config per pipeline section the rows share
    face_set: FaceSet,
    *,
    base: str,
    stage_one: dict[str, Any],
    stage_two: dict[str, Any],
    generation: GenerationConfig,
    postprocess: PostprocessConfig,
    evaluation: EvaluationConfig,
    config: BenchmarkConfig,
) -> tuple[dict[str, Any], list[dict[str, Any]], str, dict[str, Image.Image]]:
    """Train, sample and score every variant of ``config``; build the Table-1-shaped comparison.

    The benchmark's own ``images_per_prompt`` / ``num_inference_steps`` / ``max_steps`` (a demo
    budget) override ``generation`` and both stages when set.

    Returns:
        The report (everything per variant), the comparison rows, the comparison as Markdown and
        one contact sheet per scored variant.
    """
    updates = {
        k: v
        for k, v in (
            ("images_per_prompt", config.images_per_prompt),
            ("num_inference_steps", config.num_inference_steps),
        )
        if v is not None
    }
    generation = generation.model_copy(update=updates)
    inputs = EvaluationInputs.from_face_set(face_set)
    try:
        if not face_set.listed:
            raise ValueError("training_set lists no accepted items: nothing to train on")
        examples = examples_from_face_set(face_set)
    except (ValueError, KeyError) as error:
        logger.warning("Benchmark has no training examples: %s", error)
        examples = []
    cap = {"max_steps": config.max_steps} if config.max_steps is not None else {}
    models = load_metric_models(evaluation)
    loss = load_loss_recognizer(stage_two.get("identity"))
    if loss is not None and loss[0] is not None and models.faces is not None:
        loss[0].landmark_finder = models.faces.landmarks5
    try:
        results, grids = run_variants(
            config.variants,
            _Rows(
                examples=examples,
                base=base,
                stage_one=stage_one,
                stage_two=stage_two,
                cap=cap,
                generation=generation,
                postprocess=postprocess,
                models=models,
                data=inputs,
                mask_face=evaluation.mask_face_for_style,
                steps_fixed=config.num_inference_steps is not None,
                loss_recognizer=loss,
                class_images=(config.class_images_dir, config.num_class_images),
            ),
        )
    finally:
        models.close()
    rows = comparison_rows(results)
    report = {
        "variants": results,
        "generation": generation.model_dump(),
        "paper_note": config.paper_note,
    }
    markdown = comparison_markdown(rows, config.paper_note, unavailable_reasons(results))
    return report, rows, markdown, grids
