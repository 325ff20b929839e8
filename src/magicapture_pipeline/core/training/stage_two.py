"""Stage two: LoRA + embeddings, three tasks sampled 1:1:1, identity (Eq. 7) and attention
refocusing (Eq. 8) as the loss-term objects of :mod:`.identity_term` and :mod:`.attention_term`.

:meth:`StageTwoTrainer._micro_step` reads top to bottom like diffusers' training loop: sample,
encode, noise, UNet, masked reconstruction (Eq. 4-6), Eq. 8, Eq. 7, total.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.models.loading import SDComponents
from magicapture_pipeline.core.models.memory import hold_frozen_weights
from magicapture_pipeline.core.training.attention_report import attention_report
from magicapture_pipeline.core.training.attention_term import AttentionRefocusingTerm
from magicapture_pipeline.core.training.examples import (
    REFERENCE,
    SOURCE,
    TASKS,
    TrainingExample,
)
from magicapture_pipeline.core.training.figures import heatmap_figure
from magicapture_pipeline.core.training.identity_term import IdentityTerm, identity_status
from magicapture_pipeline.core.training.loop import TrainingResult, _pick, _Trainer
from magicapture_pipeline.core.training.lora import lora_module_names, lora_targets
from magicapture_pipeline.core.training.validation import apply_export

if TYPE_CHECKING:
    from magicapture_pipeline.config.training import StageTwoConfig

logger = logging.getLogger(__name__)


class StageTwoTrainer(_Trainer):
    """Stage two: LoRA + embeddings, three tasks, identity and attention-refocusing losses.

    Args:
        components: the base model.
        examples: source and reference training examples.
        config: the stage's settings.
        embeddings: stage one's ``{token: embedding}`` (SDXL: ``{token: {table: row}}``),
            written into the placeholder rows.

    Attributes:
        identity_term: Eq. 7 (:class:`IdentityTerm`), ``None`` when it does not run
            (``identity_status`` says why).
        attention_term: Eq. 8 (:class:`AttentionRefocusingTerm`), ``None`` when off.
    """

    stage = "stage_two"
    config: StageTwoConfig

    def __init__(
        self,
        components: SDComponents,
        examples: Sequence[TrainingExample],
        config: StageTwoConfig,
        embeddings: Mapping[str, Any] | None = None,
    ):
        from peft import LoraConfig

        super().__init__(components, examples, config)
        if embeddings:
            self.adapter.set_embeddings(embeddings)
        self.unet.requires_grad_(False)
        for encoder in self.adapter.text_encoders:
            encoder.requires_grad_(False)
        unet_targets, text_targets = lora_targets(config.lora.preset)
        init = True if config.lora.init == "default" else config.lora.init
        self.unet.add_adapter(
            LoraConfig(
                r=config.lora.rank,
                lora_alpha=config.lora.alpha,
                init_lora_weights=init,
                target_modules=unet_targets,
            )
        )
        if text_targets:
            # transformers' own ``add_adapter`` wants peft >= 0.22; peft's injection is the same
            # mechanism diffusers uses when it loads text-encoder LoRA.
            # SDXL: both text encoders, as diffusers' SDXL LoRA scripts do.
            from peft import inject_adapter_in_model

            for encoder in self.adapter.text_encoders:
                inject_adapter_in_model(
                    LoraConfig(
                        r=config.lora.rank,
                        lora_alpha=config.lora.alpha,
                        init_lora_weights=init,
                        target_modules=text_targets,
                    ),
                    encoder,
                )
        self.unet.train()
        for encoder in self.adapter.text_encoders:
            encoder.train()
        rows = self._train_placeholder_rows()
        lora_params = [p for p in self.unet.parameters() if p.requires_grad]
        text_params = [
            p
            for encoder in self.adapter.text_encoders
            for n, p in encoder.named_parameters()
            if p.requires_grad and "lora" in n
        ]
        groups = [
            {"params": lora_params, "lr": config.learning_rate, "name": "lora"},
            {"params": rows, "lr": config.embedding_learning_rate, "name": "embedding"},
        ]
        if text_params:  # the text encoder's LoRA at its own rate (authors' --learning_rate_text)
            groups.append(
                {
                    "params": text_params,
                    "lr": config.lora.text_encoder_learning_rate,
                    "name": "text_lora",
                }
            )
        self._build_optimizer(groups)
        self.task_odds = torch.tensor(config.task_weights, dtype=torch.float64)
        self.identity_status = identity_status(config.identity)
        self.identity_term: IdentityTerm | None = None
        if self.identity_status["enabled"]:
            self.identity_term = IdentityTerm.from_config(
                config.identity,
                vae=self.vae,
                family=self.family,
                noise_scheduler=self.noise_scheduler,
                sources=[variants[0].example for variants in self.variants[SOURCE]],
                device=self.device,
            )
            if self.identity_term is None:
                self.identity_status = {
                    **self.identity_status,
                    "enabled": False,
                    "reason": "no source landmarks",
                }
        elif config.identity.mode == "off":
            logger.info("Identity loss (Eq. 7) switched off by identity.mode: off")
        else:
            logger.warning(
                "IDENTITY LOSS (Eq. 7) IS OFF: %s. Stage two trains without it; "
                "this is recorded in concept.json.",
                self.identity_status["reason"],
            )
        self.attention_term = AttentionRefocusingTerm.from_config(
            config.attention,
            unet=self.unet,
            token_ids=self.token_ids,
            mask_floor=config.mask_floor,
            device=self.device,
            latent_size=self.latent_size,
        )
        self.attention_layers = self.attention_term.layer_names if self.attention_term else []
        self.heatmaps: dict[str, Any] = {}
        # memory.frozen_weights_16bit; the authors' fp32 decode (identity.autocast_dtype fp32)
        # keeps the VAE fp32
        self.frozen_dtype = hold_frozen_weights(
            config.memory, str(self.accelerator.mixed_precision), unet=self.unet,
            text_encoders=self.adapter.text_encoders, vae=self.vae,
            family=self.family,
            vae_fp32=config.identity.autocast_dtype == "fp32",
        )  # fmt: skip

    @property
    def latent_size(self) -> int:
        """Side of the training latents (the face masks are at latent resolution): the size
        Eq. 8's ``attention.resolution`` is read at, whatever the UNet's ``sample_size``."""
        return int(self.variants[SOURCE][0][0].example.face_mask.shape[-1])

    # one micro-batch ----------------------------------------------------------------------
    def _sample_task(self) -> str:
        return TASKS[int(torch.multinomial(self.task_odds, 1, generator=self.generator))]

    def _prompt(self, task: str) -> str:
        cfg, person, style = self.config, self.config.tokens.person, self.config.tokens.style
        if task == SOURCE:
            return self._template(cfg.source_templates).format(person)
        if task == REFERENCE:
            return self._template(cfg.reference_templates).format(style)
        return self._template(cfg.composed_templates).format(v1=person, v2=style)

    def _micro_step(self) -> tuple[Tensor, dict[str, float], str]:
        """One micro-batch: its loss (before accumulation scaling), the logged terms and task."""
        cfg = self.config
        task = self._sample_task()
        variant = self._sample_variant(SOURCE if task == SOURCE else REFERENCE)
        example = variant.example
        prompt = self._prompt(task)
        latents = self._latents(variant)  # a VAE posterior sample, scaled
        noisy, noise, timesteps = self._noisy(latents)
        cond = self._encode_prompt(prompt)
        pred = self._predict(noisy, timesteps, cond)  # the UNet (attention maps captured)
        # Eq. 4 (source: inside the face), Eq. 5-6 (reference, composed: outside it)
        mask = self._region_mask(example, inside_face=task == SOURCE)
        target = self._target(latents, noise, timesteps)
        recon = losses.masked_reconstruction_loss(pred.float(), target.float(), mask)
        total = self._style_weight(task) * recon
        terms = {"loss_recon": recon.item(), "loss_attn": 0.0, "loss_id": 0.0, "id_active": 0.0}
        if self.attention_term is not None:  # Eq. 8 on the maps of this forward
            found = self.attention_term(cond.ids, example.face_mask)
            if found is not None:
                attention, logs = found
                total = total + self.attention_term.weight * attention
                terms.update(logs)
        if self.identity_term is not None and task in cfg.identity.tasks:  # Eq. 7
            found = self._identity(noisy, pred, timesteps, (latents, noise), cond, example)
            if found is not None:
                identity, logs = found
                total = total + self.identity_term.weight * identity
                terms.update(logs)
        terms["loss"] = total.item()
        return total, terms, task

    def _identity(  # noqa: PLR0913, PLR0917 (the micro-step's tensors, in its order)
        self,
        noisy: Tensor,
        pred: Tensor,
        timesteps: Tensor,
        clean: tuple[Tensor, Tensor],
        cond: Any,
        example: TrainingExample,
    ) -> tuple[Tensor, dict[str, Any]] | None:
        """Eq. 7 for a micro-batch of a task in ``identity.tasks`` (composed; the authors' code
        also source), ``None`` without landmarks or when ``t >= T'`` (``single_pass``).

        ``clean`` is the micro-batch's ``(latents, noise)``. ``single_pass``: from the training
        forward when ``t < T'``. ``two_pass`` (official): a second UNet forward at a fresh
        ``t < T'`` with the step's own noise (authors' code: magicapture_train.py loss_step,
        ``id_noisy_latents = scheduler.add_noise(latents, noise, id_timesteps)``), every such
        micro-batch, with the attention capture paused (its maps are not used: Eq. 8 reads the
        training forward's).
        """
        term = self.identity_term
        if term is None or example.landmarks5 is None:
            return None
        if term.two_pass:
            latents, noise = clean
            t_id = _pick(self.generator, term.timestep_limit)
            noisy, _, timesteps = self._noisy(latents, t_id, noise=noise)
            with self._capture_paused():
                pred = self._predict(noisy, timesteps, cond)
        elif not term.active(timesteps):
            return None
        return term(noisy, pred, timesteps, example.landmarks5)

    def _capture_paused(self) -> Any:
        """A context in which the UNet's cross-attention capture stores nothing (SDPA runs)."""
        if self.attention_term is None:
            return contextlib.nullcontext()
        return self.attention_term.capture.paused()

    # checkpoints, heatmaps, results -------------------------------------------------------
    def _trainable(self) -> dict[str, Tensor]:
        tensors = {f"unet.{n}": p for n, p in self.unet.named_parameters() if p.requires_grad}
        tensors.update(
            {f"text_encoder.{n}": p for n, p in self.text_encoder.named_parameters() if "lora" in n}
        )
        if self.text_encoder_2 is not None:  # SDXL's second text encoder's LoRA
            tensors.update(
                {
                    f"text_encoder_2.{n}": p
                    for n, p in self.text_encoder_2.named_parameters()
                    if "lora" in n
                }
            )
        tensors.update(self._placeholder_tensors())
        return tensors

    def _after_step(self, row: dict[str, Any]) -> None:
        every = self.config.heatmap_every
        last = self.global_step == self.config.max_steps and not self.heatmaps
        if (every and self.global_step % every == 0) or (every and last):
            report = self.attention_report()
            self.heatmaps[f"step_{self.global_step:06d}"] = heatmap_figure(report, self.global_step)
            row["v1_mass_in_face"] = report["v1_mass_in_face"]
            row["v2_mass_outside_face"] = report["v2_mass_outside_face"]

    def close(self) -> None:
        """Remove the attention capture (processors back to SDPA) and the placeholder-row hook."""
        self.placeholder_rows.detach()
        if self.attention_term is not None:
            self.attention_term.close()
            self.attention_term = None

    def attention_report(
        self,
        role: str = REFERENCE,
        timestep_fraction: float = 0.5,
        seed: int = 1234,
        max_examples: int = 8,
    ) -> dict[str, Any]:
        """Where the [V1]/[V2] attention mass lies on fixed inputs
        (:func:`.attention_report.attention_report`)."""
        return attention_report(self, role, timestep_fraction, seed, max_examples)

    def result(self, base_model: str = "", resolution: int | None = None) -> TrainingResult:
        """LoRA state dicts in diffusers format, embeddings, history, heatmaps and metadata."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        self.close()
        cfg = self.config
        # Fold alpha / rank into the up (B) matrices: stock loaders assume alpha = rank.
        fold = cfg.lora.alpha / cfg.lora.rank

        def _export(model: torch.nn.Module) -> dict[str, Tensor]:
            state = get_peft_model_state_dict(model)
            state = {k: v * fold if "lora_B" in k else v for k, v in state.items()}
            return convert_state_dict_to_diffusers(state)

        unet_lora = _export(self.unet)
        text_lora = _export(self.text_encoder) if lora_module_names(self.text_encoder) else None
        text_lora_2 = None
        if self.text_encoder_2 is not None and lora_module_names(self.text_encoder_2):
            text_lora_2 = _export(self.text_encoder_2)
        metadata = {
            "stage": self.stage,
            "base_model": base_model,
            "family": self.family,
            "resolution": resolution,
            "preset": cfg.lora.preset,
            "lora_rank": cfg.lora.rank,
            "lora_alpha": cfg.lora.alpha,
            "unet_lora_modules": len(lora_module_names(self.unet)),
            "text_encoder_lora_modules": sum(
                len(lora_module_names(encoder)) for encoder in self.adapter.text_encoders
            ),
            "identity_loss": self.identity_status,
            # the eos_token_id each text encoder pools at (core.models.loading.pool_at_end_of_text)
            "text_pooling": dict(self.components.text_pooling),
            "attention_refocusing": {
                "enabled": cfg.attention.enabled,
                "weight": cfg.attention.weight,
                "resolution": cfg.attention.resolution,
                "layers": list(self.attention_layers),
            },
            "steps": self.global_step,
            "seed": cfg.seed,
        }
        return TrainingResult(
            embeddings=self.placeholder_embeddings(),
            history=list(self.history),
            heatmaps=dict(self.heatmaps),
            unet_lora=_cpu(unet_lora),
            text_encoder_lora=_cpu(text_lora),
            metadata=metadata,
            text_encoder_2_lora=_cpu(text_lora_2),
        )


def _cpu(state: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
    """Detached contiguous CPU copies of a state dict (``None`` for an empty or absent one)."""
    if not state:
        return None
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def train_stage_two(  # noqa: PLR0913 (the stage's inputs and what its metadata records)
    components: SDComponents,
    examples: Sequence[TrainingExample],
    config: StageTwoConfig,
    embeddings: Mapping[str, Any] | None = None,
    *,
    base_model: str = "",
    resolution: int | None = None,
    progress: bool = True,
    validator: Any = None,
) -> TrainingResult:
    """Stage two from start to finish (resuming when ``config.resume``), from stage one's
    ``embeddings``: LoRA, embeddings, history, heatmaps and metadata
    (:meth:`StageTwoTrainer.result`; ``base_model`` and ``resolution`` are recorded there).
    ``validator(trainer) -> Validator``: validate during training, export as
    ``config.validation.export`` says (:mod:`.validation`, recorded in ``metadata``)."""
    trainer = StageTwoTrainer(components, examples, config, embeddings)
    trainer.validator = validator(trainer) if validator else None
    trainer.train(progress=progress)
    export = apply_export(trainer, config.checkpoint_dir, config.validation.export)
    result = trainer.result(base_model, resolution)
    result.metadata.update(export)
    return result
