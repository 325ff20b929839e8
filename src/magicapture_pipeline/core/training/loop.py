"""The loop both stages share: accelerator, data variants, noise, the optimiser step and ``train``.

Every random draw of a trainer goes through one CPU ``torch.Generator`` whose state is
checkpointed with the torch and python RNG states (:mod:`.checkpoints`), so a resumed run on CPU
reaches bit-identical weights.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.models.families import Conditioning, FamilyAdapter, TableRows
from magicapture_pipeline.core.models.loading import SDXL, SDComponents, ensure_end_of_text_pooling
from magicapture_pipeline.core.models.memory import apply_memory_options
from magicapture_pipeline.core.models.tokens import placeholder_ids
from magicapture_pipeline.core.training import checkpoints
from magicapture_pipeline.core.training.examples import (
    REFERENCE,
    SOURCE,
    TrainingExample,
    _Variant,
    jitter_brightness_contrast,
)

if TYPE_CHECKING:
    from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a training stage hands back.

    Attributes:
        embeddings: ``{token: (hidden,) tensor}`` of the placeholder tokens; SDXL:
            ``{token: {"clip_l": row, "clip_g": row}}`` (``core.families``).
        history: one dict per logged optimiser step.
        heatmaps: ``{name: PIL image}`` attention figures (stage two).
        unet_lora: diffusers-format LoRA state dict of the UNet (stage two).
        text_encoder_lora: the same for the text encoder (``official`` preset) or ``None``.
        metadata: what produced it (preset, identity-loss status, base model, family, ...).
        text_encoder_2_lora: SDXL's second text encoder, like ``text_encoder_lora``.
    """

    embeddings: dict[str, Any]
    history: list[dict[str, Any]]
    heatmaps: dict[str, Any] = field(default_factory=dict)
    unet_lora: dict[str, Tensor] | None = None
    text_encoder_lora: dict[str, Tensor] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    text_encoder_2_lora: dict[str, Tensor] | None = None


def build_accelerator(mixed_precision: str, device: str | None) -> Any:
    """An ``Accelerator`` for device placement; mixed precision is forced off on CPU."""
    from accelerate import Accelerator

    cpu = device == "cpu" or not torch.cuda.is_available()
    return Accelerator(mixed_precision="no" if cpu else mixed_precision, cpu=cpu)


def average_gradients(accelerator: Any, params: Sequence[torch.nn.Parameter]) -> int:
    """Average ``params``' gradients over the processes with one all-reduce per dtype/device.

    The gradients are packed into one flat buffer per (dtype, device), reduced (mean) and
    unpacked in place; a tensor-by-tensor reduce costs one collective per LoRA matrix (hundreds at
    SD size). Returns the number of collectives issued.
    """
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for param in params:
        if param.grad is not None:
            groups.setdefault((param.grad.dtype, param.grad.device), []).append(param.grad)
    for grads in groups.values():
        flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()
    return len(groups)


def _pick(generator: torch.Generator, count: int) -> int:
    return int(torch.randint(count, (1,), generator=generator))


def region_mask(
    face_mask: Tensor, inside_face: bool, *, floor: float, device: torch.device
) -> Tensor:
    """The (1, 1, H, W) loss region of an example: its face mask (Eq. 4; [V1] in Eq. 8) or the
    rest (Eq. 5-6; [V2] in Eq. 8), softened by :func:`core.losses.soften_mask` when ``floor`` is
    above 0 (the trainer's ``mask_floor``)."""
    mask = face_mask if inside_face else 1.0 - face_mask
    mask = mask.unsqueeze(0).to(device)
    if floor > 0:
        mask = losses.soften_mask(mask, floor=floor)
    return mask


def vae_precision(family: str, device: torch.device) -> Any:
    """SDXL's VAE overflows in fp16: fp16 autocast off around it (weights fp32, as diffusers'
    ``force_upcast``); other autocasts (bf16) and SD 1.x are left as they are."""
    import contextlib

    kind = device.type
    fp16 = torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16
    if family == SDXL and fp16:
        return torch.autocast(device_type=kind, enabled=False)
    return contextlib.nullcontext()


class _Trainer:
    """Shared machinery: data variants, noise, text encoding, the optimiser step and checkpoints.

    What differs between SD 1.x and SDXL (token tables, prompt encoding, the UNet's extra
    conditioning) goes through :class:`core.families.FamilyAdapter` (``self.adapter``).
    """

    stage = "base"
    config: StageOneConfig | StageTwoConfig

    def __init__(
        self,
        components: SDComponents,
        examples: Sequence[TrainingExample],
        config: StageOneConfig | StageTwoConfig,
    ):
        self.config = config
        self.components = components
        ensure_end_of_text_pooling(components)  # pooled text embeds at end-of-text, not [V2]
        self.tokenizer = components.tokenizer
        self.noise_scheduler = components.noise_scheduler
        self.accelerator = build_accelerator(config.mixed_precision, config.device)
        self.device = self.accelerator.device
        # One stream per process, so data-parallel workers draw different samples.
        self.generator = torch.Generator().manual_seed(config.seed + self.accelerator.process_index)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.adapter = FamilyAdapter(components)
        self.family = self.adapter.family
        self.text_encoder = components.text_encoder.to(self.device)
        self.text_encoder_2 = (
            None if components.text_encoder_2 is None else components.text_encoder_2.to(self.device)
        )
        self.unet = components.unet.to(self.device)
        self.vae = components.vae.to(self.device)
        self.vae.requires_grad_(False)
        self.scaling = float(self.vae.config.scaling_factor)
        encoders = [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]
        apply_memory_options(config.memory, unet=self.unet, text_encoders=encoders, vae=self.vae)
        self.tokens = [config.tokens.person, config.tokens.style]
        self._ensure_tokens()
        self.token_ids = placeholder_ids(self.tokenizer, self.tokens)
        self.variants = self._build_variants(examples)
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.validator: Any = None  # core.training.validation.Validator, set by the caller

    # setup --------------------------------------------------------------------------------
    def _ensure_tokens(self) -> None:
        """Add [V1]/[V2] to every token table that lacks them (SDXL: both)."""
        tokens = self.config.tokens
        self.adapter.add_placeholder_tokens(
            self.tokens,
            [tokens.person_init, tokens.style_init],
            random_std=tokens.random_std,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _build_variants(
        self, examples: Sequence[TrainingExample]
    ) -> dict[str, list[list[_Variant]]]:
        """``{role: [[variant per augmentation] per example]}``, latents cached when asked."""
        by_role: dict[str, list[list[_Variant]]] = {SOURCE: [], REFERENCE: []}
        for example in examples:
            if example.role not in by_role:
                raise ValueError(f"unknown role {example.role!r} of {example.id}")
            augmented = [example, example.flipped()] if self.config.hflip else [example]
            if any(self.config.color_jitter):
                augmented = [self._jittered(item) for item in augmented]
            variants = [_Variant(item) for item in augmented]
            if self.config.cache_latents:
                for variant in variants:
                    variant.latent_mean, variant.latent_std = self._encode(variant.example.image)
            by_role[example.role].append(variants)
        for role, items in by_role.items():
            if not items:
                raise ValueError(f"no {role} images to train on")
        return by_role

    def _jittered(self, example: TrainingExample) -> TrainingExample:
        """``example`` with its brightness and contrast jittered once (``color_jitter``), drawn
        from the trainer's generator; as the authors' cached latents freeze one draw per item."""
        brightness, contrast = self.config.color_jitter
        image = jitter_brightness_contrast(
            example.image, brightness, contrast, generator=self.generator
        )
        return TrainingExample(
            example.id, example.role, image, example.face_mask, example.landmarks5
        )

    @torch.no_grad()
    def _encode(self, image: Tensor) -> tuple[Tensor, Tensor]:
        with vae_precision(self.family, self.device):
            dist = self.vae.encode(image.unsqueeze(0).to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float().cpu(), dist.std.float().cpu()

    # sampling -----------------------------------------------------------------------------
    def _sample_variant(self, role: str) -> _Variant:
        items = self.variants[role]
        options = items[_pick(self.generator, len(items))]
        return options[_pick(self.generator, len(options))]

    def _latents(self, variant: _Variant) -> Tensor:
        if variant.latent_mean is None:
            mean, std = self._encode(variant.example.image)
        else:
            mean, std = variant.latent_mean, variant.latent_std
        eps = torch.randn(mean.shape, generator=self.generator)
        return ((mean + std * eps) * self.scaling).to(self.device)

    def _noisy(
        self, latents: Tensor, timestep: int | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(noisy latents, noise, timesteps)`` at ``timestep`` (drawn below
        ``max_timestep_fraction * T`` when ``None``) with ``noise`` (drawn when ``None``)."""
        if noise is None:
            noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
        if timestep is None:
            total = self.noise_scheduler.config.num_train_timesteps
            limit = max(int(self.config.max_timestep_fraction * total), 1)
            timestep = _pick(self.generator, limit)
        timesteps = torch.tensor([timestep], device=self.device, dtype=torch.long)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        return noisy, noise, timesteps

    def _target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        kind = self.noise_scheduler.config.prediction_type
        if kind not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {kind!r}")
        velocity = kind == "v_prediction"
        return self.noise_scheduler.get_velocity(latents, noise, timesteps) if velocity else noise

    def _template(self, templates: Sequence[str]) -> str:
        return templates[_pick(self.generator, len(templates))]

    def _encode_prompt(self, prompt: str) -> Conditioning:
        """The prompt's ids and UNet conditioning, as the family's pipeline builds them."""
        return self.adapter.encode([prompt], self.device)

    def _predict(self, noisy: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        """The UNet's prediction (SDXL: with its pooled embedding and time ids)."""
        return self.adapter.predict(self.unet, noisy, timesteps, cond)

    def _style_weight(self, role_or_task: str) -> float:
        """``style_weight`` for reference and composed reconstruction while the stage is in its
        first ``style_weight_until`` (the authors' ``lambda_style`` for cur_t < 0.5), else 1."""
        config = self.config
        early = self.global_step / config.max_steps < config.style_weight_until
        return config.style_weight if role_or_task != SOURCE and early else 1.0

    def _region_mask(self, example: TrainingExample, inside_face: bool) -> Tensor:
        return region_mask(
            example.face_mask, inside_face, floor=self.config.mask_floor, device=self.device
        )

    # the optimiser step -------------------------------------------------------------------
    def _micro_step(self) -> tuple[Tensor, dict[str, float], str]:
        raise NotImplementedError

    def _trainable(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def step(self) -> dict[str, Any]:
        """One optimiser step over ``gradient_accumulation_steps`` micro-batches.

        Returns:
            The history row: step, tasks, the mean of every loss term, learning rates.
        """
        accumulation = self.config.gradient_accumulation_steps
        self.placeholder_rows.attach()
        sums: dict[str, float] = {}
        tasks = []
        for _ in range(accumulation):
            with self.accelerator.autocast():
                loss, terms, task = self._micro_step()
            self.accelerator.backward(loss / accumulation)
            tasks.append(task)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.accelerator.num_processes > 1:  # data parallel: average the gradients
            average_gradients(self.accelerator, params)
        if self.config.max_grad_norm:  # 0 or None: no clipping (the authors' stage one)
            self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        skipped = getattr(self.optimizer, "step_was_skipped", False)  # fp16 overflow: no step
        if not skipped:
            self._after_optimizer_step()
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.placeholder_rows.sync()
        self.global_step += 1
        row: dict[str, Any] = {"step": self.global_step, "task": "+".join(tasks)}
        row.update({key: value / accumulation for key, value in sums.items()})
        for group in self.optimizer.param_groups:
            row[f"lr_{group.get('name', 'params')}"] = float(group["lr"])
        return row

    def _build_optimizer(self, groups: list[dict[str, Any]]) -> None:
        from diffusers.optimization import get_scheduler

        optimizer = torch.optim.AdamW(groups, weight_decay=self.config.adam_weight_decay)
        scheduler = get_scheduler(
            self.config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=self.config.lr_warmup_steps,
            num_training_steps=self.config.max_steps,
        )
        # The optimiser is prepared so fp16 loss scaling (unscale before clipping, skipped steps)
        # is handled. The scheduler is not: accelerate's AcceleratedScheduler steps
        # num_processes times per call (it assumes a dataloader split over processes), so under
        # N processes a schedule spanning max_steps would end after max_steps / N steps. It is
        # stepped once per optimiser step instead, and not when fp16 skipped the step.
        self.optimizer = self.accelerator.prepare(optimizer)
        self.lr_scheduler = scheduler

    # checkpoints (core.training.checkpoints) ----------------------------------------------
    def save_checkpoint(self, root: str | Path) -> Path:
        """Write ``root/checkpoint-<step>/`` whole (:func:`checkpoints.save_checkpoint`)."""
        return checkpoints.save_checkpoint(self, root, keep=self.config.keep_checkpoints)

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote (same trainer setup required)."""
        checkpoints.load_checkpoint(self, folder)

    def _train_placeholder_rows(self) -> list[torch.nn.Parameter]:
        """The K trainable placeholder rows of each token table (one table for SD 1.x, two for
        SDXL); the embedding matrices themselves stay frozen."""
        self.placeholder_rows = TableRows(self.adapter.placeholder_rows(self.tokens))
        return self.placeholder_rows.params()

    def _placeholder_tensors(self) -> dict[str, Tensor]:
        """The trainable rows by checkpoint name: ``placeholder_rows`` (SDXL also
        ``placeholder_rows_2``, the second table's)."""
        names = ["placeholder_rows", "placeholder_rows_2"]
        return dict(zip(names, self.placeholder_rows.params(), strict=False))

    # the loop -----------------------------------------------------------------------------
    def _after_optimizer_step(self) -> None:
        """Hook after each optimiser step, before the lr schedule moves (stage one: the
        embedding-norm decay)."""

    def _after_step(self, row: dict[str, Any]) -> None:
        """Hook for per-step extras (stage two: heatmaps)."""

    def train(self, progress: bool = True, until: int | None = None) -> list[dict[str, Any]]:
        """Run to ``max_steps`` (resuming first when configured); returns the history.

        ``until`` stops early after that step (an interruption, for tests and benchmarks); the
        lr schedule still spans ``max_steps``.
        """
        from tqdm.auto import tqdm

        config = self.config
        if config.resume:
            checkpoints.resume_newest(self, config.checkpoint_dir)
        bar = tqdm(total=config.max_steps, initial=self.global_step, desc=self.stage,
                   disable=not progress, dynamic_ncols=True)  # fmt: skip
        stop = config.max_steps if until is None else min(until, config.max_steps)
        while self.global_step < stop:
            row = self.step()
            if self.global_step % max(config.log_every, 1) == 0:
                self.history.append(row)
            self._after_step(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k.startswith("loss")})
            validated = self.validator is not None and self.validator.due(self.global_step)
            if validated:  # core.training.validation; its checkpoint is the exportable step
                self.validator.run(self.global_step)
            every = config.checkpoint_every
            if config.checkpoint_dir and (validated or every and self.global_step % every == 0):
                self.save_checkpoint(config.checkpoint_dir)
            if validated and self.validator.should_stop():
                break  # early stop (validation.patience)
        bar.close()
        return self.history

    def placeholder_embeddings(self) -> dict[str, Any]:
        """``{token: embedding}`` as they are now (SDXL: ``{token: {table: row}}``)."""
        return self.adapter.get_embeddings(self.tokens)
