"""What each part of MagiCapture costs per step, against its baseline, in one run (``make bench``).

``python -m magicapture_pipeline.speed_bench`` measures, for each model size, one optimiser step of

* stage one (embeddings only, masked loss) with cached latents and with a VAE encode every step;
* stage two (LoRA + embeddings, composed-prompt task with the non-face mask):
  ``plain`` (masked loss only, SDPA everywhere), ``full`` (+ attention refocusing, Eq. 8, capture
  at one attn2 resolution), ``id_single_pass`` (``full`` + identity loss, Eq. 7, from the same UNet
  forward) and ``id_two_pass`` (``full`` + identity from a second UNet forward, as the official
  code does); with the trainers also ``stage2_default`` (this project's default step) and
  ``stage2_authors`` (the authors' way: every attention layer's maps stored per head, a second
  UNet pass for Eq. 7, full fp32 decode), whose ratio is ``stage2_authors_over_default``;

and the per-image costs of preprocessing, generation and evaluation. Each figure is the median of
repeated steps after warm-up; variants are interleaved round-robin so that machine noise hits
every variant alike, and each ratio divides two medians of the same run. Each size runs in its own
process so its peak RSS is its own. Where a goal is missed a ``torch.profiler`` table of the two
compared steps is written beside the figures. Results: ``data/08_reporting/bench.json`` and
``bench.md``. Nothing here asserts a time: the benchmark reports, it does not fail.

By default the steps are the project's own trainers (``core.training.StageOneTrainer`` /
``StageTwoTrainer``, :class:`TrainerBench`) with a batch of 1 and gradient accumulation 1 (the
paper's micro-batch); ``--engine harness`` times the same steps assembled here from the core
functions (:class:`StepBench`), which is also the fallback when the trainers fail. The identity
variants force ``t < T'`` so the identity branch always runs (its cost when active).

On a GPU (``--device cuda --mixed-precision fp16``, ``make bench-gpu``) the same steps run through
the trainers with accelerate's mixed precision; each step is bracketed by
``torch.cuda.synchronize``, the peak allocated GPU memory of each variant is reported, profiles
rank operators by GPU time, and the default sizes add ``sd15_512`` (SD 1.5's architectures at the
paper's 512 px) and ``sdxl_1024`` (SDXL base's architectures at 1024 px, Eq. 8 on the 32 x 32
maps). The per-image figures stay CPU figures. ``sdxl_like_256`` is SDXL's layout at a CPU size
(its Eq. 8 reads the 8 x 8 level, 1/32 of the side like SDXL's 32 at 1024 px); SDXL sizes run
through the trainers only (the harness assembles SD 1.x steps).

Layout: :mod:`.sizes` (sizes, goals, models), :mod:`.harness` (:class:`StepBench`),
:mod:`.trainer_bench` (:class:`TrainerBench`, figures and ratios), :mod:`.measure` (timing),
:mod:`.per_image` (per-image figures), :mod:`.report` (report and command line).
"""

from magicapture_pipeline.speed_bench.harness import StepBench
from magicapture_pipeline.speed_bench.measure import measure_size
from magicapture_pipeline.speed_bench.per_image import (
    measure_evaluation,
    measure_generation,
    measure_preprocess,
)
from magicapture_pipeline.speed_bench.report import _markdown, main, run
from magicapture_pipeline.speed_bench.sizes import (
    GOALS,
    SIZES,
    BenchModel,
    SizeSpec,
    build_model,
    default_sizes,
)
from magicapture_pipeline.speed_bench.trainer_bench import (
    RATIOS,
    STAGE_ONE_FIGURES,
    STAGE_TWO_FIGURES,
    TRAINER_FIGURES,
    TrainerBench,
)

__all__ = [
    "GOALS",
    "RATIOS",
    "SIZES",
    "STAGE_ONE_FIGURES",
    "STAGE_TWO_FIGURES",
    "TRAINER_FIGURES",
    "BenchModel",
    "SizeSpec",
    "StepBench",
    "TrainerBench",
    "_markdown",
    "build_model",
    "default_sizes",
    "main",
    "measure_evaluation",
    "measure_generation",
    "measure_preprocess",
    "measure_size",
    "run",
]
