"""Stage two: LoRA + embeddings, three tasks sampled 1:1:1, identity (Eq. 7) and attention
refocusing (Eq. 8); see :mod:`.identity_term` and :mod:`.attention_term` for their wiring."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.models.loading import SDComponents, upsampling_factor
from magicapture_pipeline.core.training.attention_term import AttentionTerm
from magicapture_pipeline.core.training.examples import (
    REFERENCE,
    SOURCE,
    TASKS,
    TrainingExample,
)
from magicapture_pipeline.core.training.figures import heatmap_figure
from magicapture_pipeline.core.training.identity_term import IdentityTerm, identity_status
from magicapture_pipeline.core.training.loop import TrainingResult, _Trainer
from magicapture_pipeline.core.training.lora import lora_module_names, lora_targets

logger = logging.getLogger(__name__)


class StageTwoTrainer(IdentityTerm, AttentionTerm, _Trainer):
    """Stage two: LoRA + embeddings, three tasks, identity and attention-refocusing losses.

    Args:
        components: the base model.
        examples: source and reference training examples.
        config: a ``StageTwoConfig``.
        embeddings: stage one's ``{token: embedding}`` (SDXL: ``{token: {table: row}}``),
            written into the placeholder rows.
    """

    stage = "stage_two"

    def __init__(
        self,
        components: SDComponents,
        examples: Sequence[TrainingExample],
        config: Any,
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
        self.identity = identity_status(config.identity)
        self._warned: set[str] = set()
        self.latent_factor = upsampling_factor(self.vae)  # diffusers' vae_scale_factor
        self.face_encoder = None
        self.identity_decoder = None  # TAESD when identity.decoder is tiny_autoencoder
        self.source_embedding: Tensor | None = None
        if self.identity["enabled"]:
            self._setup_identity()
        elif config.identity.mode == "off":
            logger.info("Identity loss (Eq. 7) switched off by identity.mode: off")
        else:
            logger.warning(
                "IDENTITY LOSS (Eq. 7) IS OFF: %s. Stage two trains without it; "
                "this is recorded in concept.json.",
                self.identity["reason"],
            )
        self.capture = None
        if config.attention.enabled:
            from magicapture_pipeline.core.models.attention import CrossAttentionCapture

            self.capture = CrossAttentionCapture(
                self.unet,
                resolution=config.attention.resolution,
                layer_names=config.attention.layers or None,
                keep_heads=config.attention.scale_order == "scale_then_average",
            )
            self.capture.install()
        self.attention_layers = list(self.capture.layer_names) if self.capture else []
        self.heatmaps: dict[str, Any] = {}

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
        cfg = self.config
        task = self._sample_task()
        variant = self._sample_variant(SOURCE if task == SOURCE else REFERENCE)
        example = variant.example
        prompt = self._prompt(task)
        latents = self._latents(variant)
        noisy, noise, timesteps = self._noisy(latents)
        cond = self._encode_prompt(prompt)
        pred = self._predict(noisy, timesteps, cond)
        mask = self._region_mask(example, inside_face=task == SOURCE)
        recon = losses.masked_reconstruction_loss(
            pred.float(), self._target(latents, noise, timesteps).float(), mask
        )
        total = self._style_weight(task) * recon
        terms = {"loss_recon": recon.item(), "loss_attn": 0.0, "loss_id": 0.0, "id_active": 0.0}
        attention = self._attention_term(cond.ids, example)
        if attention is not None:
            total = total + cfg.attention.weight * attention
            terms["loss_attn"] = attention.item()
        if task in cfg.identity.tasks and self._identity_ready(example):
            identity = self._composed_identity(
                noisy, pred, timesteps, latents=latents, cond=cond, example=example
            )
            if identity is not None:
                total = total + cfg.identity.weight * identity
                terms["loss_id"], terms["id_active"] = identity.item(), 1.0
        terms["loss"] = total.item()
        return total, terms, task

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
        if self.capture is not None:
            self.capture.remove()
            self.capture = None

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
            "identity_loss": self.identity,
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
