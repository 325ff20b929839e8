"""DreamBooth's prior-preservation loss for the benchmark's DreamBooth-LoRA row (Ruiz et al. 2023,
arXiv 2208.12242, Eq. 2), added on top of stage two's per-step loss WITHOUT touching MagiCapture's
own training path (:class:`StageTwoTrainer` is unchanged; this subclass only adds a term).

Each micro-step trains one instance example (stage two's step, whole-image for the baseline) plus
one class image under the class prompt, as diffusers' ``train_dreambooth_lora.py`` does: it
concatenates instance and class examples in one batch, splits the prediction in two and adds
``prior_loss_weight * mse(class_pred, class_target)``. The UNet treats batch items independently,
so a second forward of the class example gives the same loss and gradient as the concatenation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from magicapture_pipeline.core.training.examples import TrainingExample, _Variant
from magicapture_pipeline.core.training.loop import _pick
from magicapture_pipeline.core.training.stage_two import StageTwoTrainer

if TYPE_CHECKING:
    from magicapture_pipeline.config.training import StageTwoConfig
    from magicapture_pipeline.core.models.loading import SDComponents

CLASS_ROLE = "class"


class PriorPreservationTrainer(StageTwoTrainer):
    """Stage two plus DreamBooth's prior loss on class images of the base model.

    Args:
        class_images: ``(3, H, W)`` tensors in ``[-1, 1]`` at the training resolution, sampled
            from the base model (``core.generation.class_images``).
        class_prompt: their prompt (``"a photo of a person"``).
        prior_loss_weight: the prior loss's weight (DreamBooth / diffusers: 1.0).
    """

    def __init__(  # noqa: PLR0913 - stage two's inputs plus the prior's three
        self,
        components: SDComponents,
        examples: Sequence[TrainingExample],
        config: StageTwoConfig,
        embeddings: Mapping[str, Any] | None = None,
        *,
        class_images: Sequence[Tensor],
        class_prompt: str,
        prior_loss_weight: float,
    ):
        if not class_images:
            raise ValueError("prior preservation needs at least one class image")
        super().__init__(components, examples, config, embeddings)
        self.class_prompt = class_prompt
        self.prior_loss_weight = float(prior_loss_weight)
        mask = torch.ones_like(self.variants["source"][0][0].example.face_mask)
        self.class_variants = []
        for index, image in enumerate(class_images):
            example = TrainingExample(f"class_{index:04d}", CLASS_ROLE, image, mask)
            variant = _Variant(example)
            if config.cache_latents:
                variant.latent_mean, variant.latent_std = self._encode(image)
            self.class_variants.append(variant)

    def _prior_loss(self) -> Tensor:
        """The class example's plain (unmasked) MSE under the class prompt."""
        variant = self.class_variants[_pick(self.generator, len(self.class_variants))]
        latents = self._latents(variant)
        noisy, noise, timesteps = self._noisy(latents)
        cond = self._encode_prompt(self.class_prompt)
        with self._capture_paused():  # Eq. 8 reads the instance forward's maps only
            pred = self._predict(noisy, timesteps, cond)
        target = self._target(latents, noise, timesteps)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    def _micro_step(self) -> tuple[Tensor, dict[str, float], str]:
        total, terms, task = super()._micro_step()
        prior = self._prior_loss()
        total = total + self.prior_loss_weight * prior
        terms["loss_prior"] = prior.item()
        terms["loss"] = total.item()
        return total, terms, task

    def result(self, base_model: str = "", resolution: int | None = None) -> Any:
        """Stage two's result with the prior's settings in its metadata."""
        out = super().result(base_model, resolution)
        out.metadata["prior_preservation"] = {
            "class_prompt": self.class_prompt,
            "num_class_images": len(self.class_variants),
            "prior_loss_weight": self.prior_loss_weight,
        }
        return out
