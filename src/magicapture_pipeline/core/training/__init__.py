"""The two MagiCapture training stages (arXiv 2309.06895 v2, Method), checkpoints and resume.

Where things live: :mod:`.loop` (the loop both stages share: accelerator, optimiser, lr schedule),
:mod:`.stage_one`, :mod:`.stage_two` (with the entry points :func:`train_stage_one` and
:func:`train_stage_two`), :mod:`.identity_term` (Eq. 7 as a loss-term object),
:mod:`.attention_term` (Eq. 8 as a loss-term object), :mod:`.attention_report` (where the
attention mass lies, behind the heatmaps), :mod:`.lora` (LoRA presets), :mod:`.checkpoints`
(save / load / last checkpoint) and :mod:`.examples` (training examples from the training set).
Figures (heatmaps, loss curves) are in :mod:`.figures`.

* Stage one (:class:`StageOneTrainer`): only the [V1]/[V2] embedding rows learn, with the masked
  reconstruction loss of Eq. 4 (source images, inside the face mask) and Eq. 5 (reference images,
  outside it).
* Stage two (:class:`StageTwoTrainer`): LoRA on the UNet (and, for the ``official`` preset, the text
  encoder) plus the embeddings, with three tasks sampled 1:1:1: source (Eq. 4), reference (Eq. 5)
  and the composed prompt pseudo-labelled by a reference image (Eq. 6), plus the identity loss
  (Eq. 7) and attention refocusing (Eq. 8).

A micro-step of stage two reads top to bottom: sample a task and an image, encode, noise, UNet,
the masked reconstruction loss, then Eq. 8 (:class:`AttentionRefocusingTerm`) and Eq. 7
(:class:`IdentityTerm`), each built from its config section and called with explicit inputs.

Both trainers expose ``.step()`` (one optimiser step = ``gradient_accumulation_steps``
micro-batches), ``.train()`` (the loop with a progress bar, history rows, checkpoints and
heatmaps) and ``save_checkpoint`` / ``load_checkpoint``. Every random draw of a trainer goes through
one CPU ``torch.Generator`` whose state is checkpointed with the torch and python RNG states, so a
resumed run on CPU reaches bit-identical weights.

Devices: ``accelerate.Accelerator`` places the models (GPU when present) and runs mixed precision
(``fp16``/``bf16`` on GPU, forced off on CPU; trainable weights stay fp32, the optimiser is
prepared so fp16 loss scaling is handled). Multi-GPU, data-parallel::

    accelerate launch --num_processes=N -m magicapture_pipeline \
        --pipelines=train_stage_one,train_stage_two

(``python -m magicapture_pipeline`` is ``kedro run``); each process draws its own samples
(seed + process index) and gradients are averaged before every optimiser step. Every process runs
the Kedro nodes, so each writes the same outputs; run the later pipelines in one process.
"""

from magicapture_pipeline.core.training.attention_term import (
    AttentionRefocusingTerm,
    mass_fraction,
)
from magicapture_pipeline.core.training.checkpoints import CHECKPOINT_PREFIX, last_checkpoint
from magicapture_pipeline.core.training.examples import (
    COMPOSED,
    REFERENCE,
    SOURCE,
    TASKS,
    TrainingExample,
    example_from_images,
    examples_from_training_set,
)
from magicapture_pipeline.core.training.figures import heatmap_figure, loss_curves_figure
from magicapture_pipeline.core.training.identity_term import IdentityTerm, identity_status
from magicapture_pipeline.core.training.loop import TrainingResult, build_accelerator
from magicapture_pipeline.core.training.lora import (
    TEXT_ENCODER_ATTENTION,
    UNET_CROSS_ATTENTION,
    UNET_CROSS_ATTENTION_KV,
    UNET_OFFICIAL,
    lora_module_names,
    lora_targets,
)
from magicapture_pipeline.core.training.stage_one import StageOneTrainer, train_stage_one
from magicapture_pipeline.core.training.stage_two import StageTwoTrainer, train_stage_two

__all__ = [
    "AttentionRefocusingTerm",
    "CHECKPOINT_PREFIX",
    "COMPOSED",
    "IdentityTerm",
    "REFERENCE",
    "SOURCE",
    "TASKS",
    "TEXT_ENCODER_ATTENTION",
    "UNET_CROSS_ATTENTION",
    "UNET_CROSS_ATTENTION_KV",
    "UNET_OFFICIAL",
    "StageOneTrainer",
    "StageTwoTrainer",
    "TrainingExample",
    "TrainingResult",
    "build_accelerator",
    "example_from_images",
    "examples_from_training_set",
    "heatmap_figure",
    "identity_status",
    "last_checkpoint",
    "lora_module_names",
    "lora_targets",
    "loss_curves_figure",
    "mass_fraction",
    "train_stage_one",
    "train_stage_two",
]
