"""Stage one: only the [V1]/[V2] embedding rows learn (Eq. 4 on source, Eq. 5 on reference)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.models.loading import SDComponents
from magicapture_pipeline.core.models.memory import hold_frozen_weights
from magicapture_pipeline.core.training.examples import REFERENCE, SOURCE, TrainingExample
from magicapture_pipeline.core.training.loop import TrainingResult, _pick, _Trainer
from magicapture_pipeline.core.training.validation import apply_export

if TYPE_CHECKING:
    from magicapture_pipeline.config.training import StageOneConfig


class StageOneTrainer(_Trainer):
    """Stage one: only the placeholder rows of the token embedding learn (Eq. 4-5).

    Args:
        components: the base model (the tokenizer / text encoder get the placeholder tokens).
        examples: source and reference training examples.
        config: the stage's settings.
    """

    stage = "stage_one"
    config: StageOneConfig

    def __init__(
        self,
        components: SDComponents,
        examples: Sequence[TrainingExample],
        config: StageOneConfig,
    ):
        super().__init__(components, examples, config)
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        rows = self._train_placeholder_rows()
        self.text_encoder.train()
        self.frozen_dtype = hold_frozen_weights(  # memory.frozen_weights_16bit
            config.memory, str(self.accelerator.mixed_precision), unet=self.unet,
            text_encoders=self.adapter.text_encoders, vae=self.vae,
            family=self.family,
        )  # fmt: skip
        self._build_optimizer([{"params": rows, "lr": config.learning_rate, "name": "embedding"}])

    def _trainable(self) -> dict[str, Tensor]:
        return self._placeholder_tensors()

    def _micro_step(self) -> tuple[Tensor, dict[str, float], str]:
        config = self.config
        counts = [len(self.variants[SOURCE]), len(self.variants[REFERENCE])]
        role = SOURCE if _pick(self.generator, sum(counts)) < counts[0] else REFERENCE
        variant = self._sample_variant(role)
        if role == SOURCE:
            prompt = self._template(config.source_templates).format(config.tokens.person)
        else:
            prompt = self._template(config.reference_templates).format(config.tokens.style)
        latents = self._latents(variant)
        noisy, noise, timesteps = self._noisy(latents)
        pred = self._predict(noisy, timesteps, self._encode_prompt(prompt))
        mask = self._region_mask(variant.example, inside_face=role == SOURCE)
        recon = losses.masked_reconstruction_loss(
            pred.float(), self._target(latents, noise, timesteps).float(), mask
        )
        loss = self._style_weight(role) * recon
        return loss, {"loss": loss.item(), "loss_recon": recon.item()}, role

    @torch.no_grad()
    def _after_optimizer_step(self) -> None:
        """The authors' embedding-norm decay (``--clip_ti_decay``): each [V1]/[V2] row keeps its
        direction and moves its norm ``n`` to ``n + min(1, 100 lr) (target - n)``, with the lr of
        the step just taken. SDXL: the first (CLIP-L) table only, whose norms SD 1.5 shares."""
        target = self.config.embedding_norm_target
        if target is None:
            return
        rate = min(1.0, 100.0 * float(self.optimizer.param_groups[0]["lr"]))
        rows = self.placeholder_rows.params()[0]
        norm = rows.norm(dim=-1, keepdim=True)
        rows.copy_(F.normalize(rows, dim=-1) * (norm + rate * (target - norm)))

    def result(self) -> TrainingResult:
        """The learnt embeddings and the history (the placeholder-row hook is removed)."""
        self.placeholder_rows.detach()
        return TrainingResult(
            self.placeholder_embeddings(),
            list(self.history),
            metadata={
                "stage": self.stage,
                "tokens": self.tokens,
                "steps": self.global_step,
                "family": self.family,
            },
        )


def train_stage_one(
    components: SDComponents,
    examples: Sequence[TrainingExample],
    config: StageOneConfig,
    *,
    progress: bool = True,
    validator: Any = None,
) -> TrainingResult:
    """Stage one from start to finish (resuming when ``config.resume``): the learnt [V1]/[V2]
    embeddings and the history (:meth:`StageOneTrainer.result`). ``validator``: as in
    :func:`.stage_two.train_stage_two`."""
    trainer = StageOneTrainer(components, examples, config)
    trainer.validator = validator(trainer) if validator else None
    trainer.train(progress=progress)
    export = apply_export(trainer, config.checkpoint_dir, config.validation.export)
    result = trainer.result()
    result.metadata.update(export)
    return result
