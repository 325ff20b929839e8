"""The two MagiCapture training stages (arXiv 2309.06895 v2, Sec. 3), checkpoints and resume.

* Stage one (:class:`StageOneTrainer`): only the [V1]/[V2] embedding rows learn, with the masked
  reconstruction loss of Eq. 4 (source images, inside the face mask) and Eq. 5 (reference images,
  outside it).
* Stage two (:class:`StageTwoTrainer`): LoRA on the UNet (and, for the ``official`` preset, the text
  encoder) plus the embeddings, with three tasks sampled 1:1:1: source (Eq. 4), reference (Eq. 5)
  and the composed prompt pseudo-labelled by a reference image (Eq. 6), plus the identity loss
  (Eq. 7) and attention refocusing (Eq. 8).

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

from __future__ import annotations

import io
import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.models import (
    SDComponents,
    build_tiny_autoencoder,
    check_decoder_matches,
    load_tiny_autoencoder,
    token_ids,
    upsampling_factor,
)
from magicapture_pipeline.core.tokens import (
    PlaceholderRows,
    add_placeholder_tokens,
    embedding_matrix,
    get_placeholder_embeddings,
    placeholder_ids,
    set_placeholder_embeddings,
)

logger = logging.getLogger(__name__)

SOURCE, REFERENCE, COMPOSED = "source", "reference", "composed"
TASKS = (SOURCE, REFERENCE, COMPOSED)
CHECKPOINT_PREFIX = "checkpoint-"
# Official (and peft/diffusers) module names of the LoRA presets.
UNET_CROSS_ATTENTION = r".*attn2\.(to_q|to_k|to_v|to_out\.0)$"
UNET_OFFICIAL = r".*(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|.*\.ff\.net\.(0\.proj|2)$"
UNET_CROSS_ATTENTION_KV = r".*attn2\.(to_k|to_v)$"
TEXT_ENCODER_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]
# ArcFace landmark order after a horizontal flip: the left eye/mouth become the right ones.
_FLIP_LANDMARKS = [1, 0, 2, 4, 3]


@dataclass
class TrainingExample:
    """One accepted training image, ready for the trainers.

    Attributes:
        id: the image id of the training set.
        role: ``"source"`` (the person) or ``"reference"`` (the style).
        image: ``(3, H, W)`` float in ``[-1, 1]``.
        face_mask: ``(1, h, w)`` float in ``[0, 1]`` at latent resolution (``H / 8``), 1 = face.
        landmarks5: ``(5, 2)`` ArcFace-order landmarks in image pixels, or ``None``.
    """

    id: str
    role: str
    image: Tensor
    face_mask: Tensor
    landmarks5: Tensor | None = None

    def flipped(self) -> TrainingExample:
        """The horizontally mirrored example (image, mask and landmarks)."""
        landmarks = None
        if self.landmarks5 is not None:
            width = self.image.shape[-1]
            mirrored = self.landmarks5.clone()
            mirrored[:, 0] = width - 1 - mirrored[:, 0]
            landmarks = mirrored[_FLIP_LANDMARKS]
        return TrainingExample(
            self.id, self.role, self.image.flip(-1), self.face_mask.flip(-1), landmarks
        )


@dataclass
class _Variant:
    """An (augmented) example with its cached latent distribution (mean, std) or ``None``."""

    example: TrainingExample
    latent_mean: Tensor | None = None
    latent_std: Tensor | None = None


@dataclass
class TrainingResult:
    """What a training stage hands back.

    Attributes:
        embeddings: ``{token: (hidden,) tensor}`` of the placeholder tokens.
        history: one dict per logged optimiser step.
        heatmaps: ``{name: PIL image}`` attention figures (stage two).
        unet_lora: diffusers-format LoRA state dict of the UNet (stage two).
        text_encoder_lora: the same for the text encoder (``official`` preset) or ``None``.
        metadata: what produced it (preset, identity-loss status, base model, ...).
    """

    embeddings: dict[str, Tensor]
    history: list[dict[str, Any]]
    heatmaps: dict[str, Any] = field(default_factory=dict)
    unet_lora: dict[str, Tensor] | None = None
    text_encoder_lora: dict[str, Tensor] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def build_accelerator(mixed_precision: str, device: str | None) -> Any:
    """An ``Accelerator`` for device placement; mixed precision is forced off on CPU."""
    from accelerate import Accelerator

    cpu = device == "cpu" or not torch.cuda.is_available()
    return Accelerator(mixed_precision="no" if cpu else mixed_precision, cpu=cpu)


def _pick(generator: torch.Generator, count: int) -> int:
    return int(torch.randint(count, (1,), generator=generator))


def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def last_checkpoint(root: str | Path | None) -> Path | None:
    """The checkpoint folder with the highest step under ``root`` (``None`` if there is none)."""
    if root is None:
        return None
    dirs = _checkpoint_dirs(Path(root))
    return dirs[-1] if dirs else None


class _Trainer:
    """Shared machinery: data variants, noise, text encoding, the optimiser step and checkpoints."""

    stage = "base"

    def __init__(self, components: SDComponents, examples: Sequence[TrainingExample], config: Any):
        self.config = config
        self.components = components
        self.tokenizer = components.tokenizer
        self.noise_scheduler = components.noise_scheduler
        self.accelerator = build_accelerator(config.mixed_precision, config.device)
        self.device = self.accelerator.device
        # One stream per process, so data-parallel workers draw different samples.
        self.generator = torch.Generator().manual_seed(config.seed + self.accelerator.process_index)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.text_encoder = components.text_encoder.to(self.device)
        self.unet = components.unet.to(self.device)
        self.vae = components.vae.to(self.device)
        self.vae.requires_grad_(False)
        self.scaling = float(self.vae.config.scaling_factor)
        self.tokens = [config.tokens.person, config.tokens.style]
        self._ensure_tokens()
        self.token_ids = placeholder_ids(self.tokenizer, self.tokens)
        self.variants = self._build_variants(examples)
        self.global_step = 0
        self.history: list[dict[str, Any]] = []

    # setup --------------------------------------------------------------------------------
    def _ensure_tokens(self) -> None:
        vocab = self.tokenizer.get_vocab()
        if all(token in vocab for token in self.tokens):
            return
        add_placeholder_tokens(
            self.tokenizer,
            self.text_encoder,
            self.tokens,
            [self.config.tokens.person_init, self.config.tokens.style_init],
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
            variants = [_Variant(item) for item in augmented]
            if self.config.cache_latents:
                for variant in variants:
                    variant.latent_mean, variant.latent_std = self._encode(variant.example.image)
            by_role[example.role].append(variants)
        for role, items in by_role.items():
            if not items:
                raise ValueError(f"no {role} images to train on")
        return by_role

    @torch.no_grad()
    def _encode(self, image: Tensor) -> tuple[Tensor, Tensor]:
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

    def _noisy(self, latents: Tensor, timestep: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
        if timestep is None:
            timestep = _pick(self.generator, self.noise_scheduler.config.num_train_timesteps)
        timesteps = torch.tensor([timestep], device=self.device, dtype=torch.long)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        return noisy, noise, timesteps

    def _target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"unsupported prediction_type {kind!r}")

    def _template(self, templates: Sequence[str]) -> str:
        return templates[_pick(self.generator, len(templates))]

    def _encode_prompt(self, prompt: str) -> tuple[Tensor, Tensor]:
        ids = token_ids(self.tokenizer, [prompt]).to(self.device)
        return ids, self.text_encoder(ids)[0]

    def _region_mask(self, example: TrainingExample, inside_face: bool) -> Tensor:
        mask = example.face_mask if inside_face else 1.0 - example.face_mask
        mask = mask.unsqueeze(0).to(self.device)
        if self.config.mask_floor > 0:
            mask = losses.soften_mask(mask, floor=self.config.mask_floor)
        return mask

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
            for param in params:
                if param.grad is not None:
                    param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        if self.config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
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
        # Prepared so fp16 loss scaling (unscale before clipping, skipped steps) is handled.
        self.optimizer, self.lr_scheduler = self.accelerator.prepare(optimizer, scheduler)

    # checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, root: str | Path) -> Path:
        """Write ``root/checkpoint-<step>/``: trainable tensors and RNG states (safetensors),
        optimiser state (``torch.save`` of tensors only), step, lr schedule and history (json)."""
        from safetensors.torch import save_file

        folder = Path(root) / f"{CHECKPOINT_PREFIX}{self.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._trainable().items()}
        save_file(tensors, folder / "trainable.safetensors")
        save_file(
            {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            folder / "rng.safetensors",
        )
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        state = {
            "stage": self.stage,
            "step": self.global_step,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "python_random": _jsonable_random_state(random.getstate()),
            "history": self.history,
        }
        (folder / "state.json").write_text(json.dumps(state, indent=1))
        logger.info("Saved %s checkpoint at step %d to %s", self.stage, self.global_step, folder)
        return folder

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote (same trainer setup required)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        state = json.loads((folder / "state.json").read_text())
        if state["stage"] != self.stage:
            raise ValueError(f"{folder} is a {state['stage']} checkpoint, not {self.stage}")
        tensors = load_file(folder / "trainable.safetensors")
        current = self._trainable()
        if set(tensors) != set(current):
            raise ValueError(f"{folder} does not match this trainer's parameters")
        with torch.no_grad():
            for name, value in tensors.items():
                current[name].copy_(value.to(current[name].device, current[name].dtype))
        self.placeholder_rows.reload()
        optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(self._placeholder_row_state(optimizer_state))
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        rng = load_file(folder / "rng.safetensors")
        self.generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        random.setstate(_random_state_from_json(state["python_random"]))
        self.global_step = int(state["step"])
        self.history = list(state["history"])
        logger.info("Resumed %s from %s (step %d)", self.stage, folder, self.global_step)

    def _placeholder_row_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Optimiser state of a checkpoint written before only the placeholder rows were
        optimised (AdamW moments over the whole vocabulary): keep the placeholder rows' moments."""
        vocab = embedding_matrix(self.text_encoder).shape[0]
        for group in state.get("param_groups", []):
            if group.get("name") != "embedding":
                continue
            for index in group["params"]:
                slot = state["state"].get(index, {})
                for key, value in list(slot.items()):
                    if torch.is_tensor(value) and value.ndim == 2 and value.shape[0] == vocab:
                        slot[key] = value[self.token_ids].clone()
        return state

    def _train_placeholder_rows(self) -> torch.nn.Parameter:
        """The K trainable placeholder rows (the embedding matrix itself stays frozen)."""
        embedding_matrix(self.text_encoder).requires_grad_(False)
        self.placeholder_rows = PlaceholderRows(self.text_encoder, self.token_ids)
        self.placeholder_rows.attach()
        return self.placeholder_rows.rows

    # the loop -----------------------------------------------------------------------------
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
            found = last_checkpoint(config.checkpoint_dir)
            if found is None:
                logger.warning(
                    "resume: no checkpoint under %s, starting fresh", config.checkpoint_dir
                )
            else:
                self.load_checkpoint(found)
        bar = tqdm(
            total=config.max_steps,
            initial=self.global_step,
            desc=self.stage,
            disable=not progress,
            dynamic_ncols=True,
        )
        stop = config.max_steps if until is None else min(until, config.max_steps)
        while self.global_step < stop:
            row = self.step()
            if self.global_step % max(config.log_every, 1) == 0:
                self.history.append(row)
            self._after_step(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k.startswith("loss")})
            every = config.checkpoint_every
            if every and config.checkpoint_dir and self.global_step % every == 0:
                self.save_checkpoint(config.checkpoint_dir)
        bar.close()
        return self.history

    def placeholder_embeddings(self) -> dict[str, Tensor]:
        """``{token: embedding}`` as they are now."""
        return get_placeholder_embeddings(self.tokenizer, self.text_encoder, self.tokens)


def _jsonable_random_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _random_state_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class StageOneTrainer(_Trainer):
    """Stage one: only the placeholder rows of the token embedding learn (Eq. 4-5).

    Args:
        components: the base model (the tokenizer / text encoder get the placeholder tokens).
        examples: source and reference training examples.
        config: a ``StageOneConfig``.
    """

    stage = "stage_one"

    def __init__(self, components: SDComponents, examples: Sequence[TrainingExample], config: Any):
        super().__init__(components, examples, config)
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        rows = self._train_placeholder_rows()
        self.text_encoder.train()
        self._build_optimizer([{"params": [rows], "lr": config.learning_rate, "name": "embedding"}])

    def _trainable(self) -> dict[str, Tensor]:
        return {"token_embedding": embedding_matrix(self.text_encoder)}

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
        _, hidden = self._encode_prompt(prompt)
        pred = self.unet(noisy, timesteps, hidden).sample
        mask = self._region_mask(variant.example, inside_face=role == SOURCE)
        loss = losses.masked_reconstruction_loss(
            pred.float(), self._target(latents, noise, timesteps).float(), mask
        )
        return loss, {"loss": loss.item(), "loss_recon": loss.item()}, role

    def result(self) -> TrainingResult:
        """The learnt embeddings and the history (the placeholder-row hook is removed)."""
        self.placeholder_rows.detach()
        return TrainingResult(
            self.placeholder_embeddings(),
            list(self.history),
            metadata={"stage": self.stage, "tokens": self.tokens, "steps": self.global_step},
        )


def lora_targets(preset: str) -> tuple[str | list[str], list[str] | None]:
    """UNet and text-encoder target modules of a LoRA preset.

    ``paper``: the UNet cross-attention projections (``attn2`` q/k/v/out), nothing in the text
    encoder. ``official``: UNet self- and cross-attention and feed-forward, plus the text
    encoder's attention projections. ``custom_diffusion``: only the key and value projections of
    the UNet cross-attention (the weights Custom Diffusion fine-tunes; here as a LoRA baseline).
    """
    if preset == "paper":
        return UNET_CROSS_ATTENTION, None
    if preset == "official":
        return UNET_OFFICIAL, list(TEXT_ENCODER_ATTENTION)
    if preset == "custom_diffusion":
        return UNET_CROSS_ATTENTION_KV, None
    raise ValueError(f"unknown LoRA preset {preset!r}")


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """Names of the modules that carry a LoRA adapter (``...lora_A`` parents)."""
    return sorted(
        name.removesuffix(".lora_A")
        for name, _ in model.named_modules()
        if name.endswith(".lora_A")
    )


def identity_status(config: Any) -> dict[str, Any]:
    """Whether the identity loss (Eq. 7) runs, and why not when it does not."""
    mode = config.mode
    if mode == "off":
        return {"enabled": False, "mode": mode, "reason": "identity.mode is off"}
    if config.checkpoint is None and not config.random_init:
        return {
            "enabled": False,
            "mode": mode,
            "reason": "no ArcFace checkpoint configured (identity.checkpoint is null)",
        }
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        return {
            "enabled": False,
            "mode": mode,
            "reason": f"ArcFace checkpoint not found: {config.checkpoint}",
        }
    source = "random IResNet (tests only)" if config.checkpoint is None else config.checkpoint
    decoder = "vae"
    if config.decoder == "tiny_autoencoder":
        decoder = f"tiny_autoencoder: {config.tiny_autoencoder or 'random TAESD (tests only)'}"
    return {
        "enabled": True,
        "mode": mode,
        "decoder": decoder,
        "reason": f"ArcFace {config.arch}: {source}",
    }


class StageTwoTrainer(_Trainer):
    """Stage two: LoRA + embeddings, three tasks, identity and attention-refocusing losses.

    Args:
        components: the base model.
        examples: source and reference training examples.
        config: a ``StageTwoConfig``.
        embeddings: stage one's ``{token: embedding}`` (written into the placeholder rows).
    """

    stage = "stage_two"

    def __init__(
        self,
        components: SDComponents,
        examples: Sequence[TrainingExample],
        config: Any,
        embeddings: Mapping[str, Tensor] | None = None,
    ):
        from peft import LoraConfig

        super().__init__(components, examples, config)
        if embeddings:
            set_placeholder_embeddings(self.tokenizer, self.text_encoder, embeddings)
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
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
            from peft import inject_adapter_in_model

            inject_adapter_in_model(
                LoraConfig(
                    r=config.lora.rank,
                    lora_alpha=config.lora.alpha,
                    init_lora_weights=init,
                    target_modules=text_targets,
                ),
                self.text_encoder,
            )
        self.unet.train()
        self.text_encoder.train()
        rows = self._train_placeholder_rows()
        lora_params = [p for p in self.unet.parameters() if p.requires_grad]
        lora_params += [
            p for n, p in self.text_encoder.named_parameters() if p.requires_grad and "lora" in n
        ]
        self._build_optimizer(
            [
                {"params": lora_params, "lr": config.learning_rate, "name": "lora"},
                {"params": [rows], "lr": config.embedding_learning_rate, "name": "embedding"},
            ]
        )
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
            from magicapture_pipeline.core.attention import CrossAttentionCapture

            self.capture = CrossAttentionCapture(self.unet, resolution=config.attention.resolution)
            self.capture.install()
        self.heatmaps: dict[str, Any] = {}

    # identity (Eq. 7) ---------------------------------------------------------------------
    def _setup_identity(self) -> None:
        from magicapture_pipeline.core import arcface

        cfg = self.config.identity
        if cfg.checkpoint is not None:
            backbone = arcface.load_arcface(cfg.checkpoint, cfg.arch)
        else:
            backbone = arcface.freeze(arcface.build_iresnet(cfg.arch))
        self.face_encoder = arcface.FaceIdentityEncoder(backbone).to(self.device)
        if cfg.decoder == "tiny_autoencoder":
            if cfg.tiny_autoencoder is None:
                decoder = build_tiny_autoencoder()
            else:
                decoder = load_tiny_autoencoder(cfg.tiny_autoencoder)
            check_decoder_matches(decoder, self.vae)
            self.identity_decoder = decoder.to(self.device)
        sources = [
            v[0].example for v in self.variants[SOURCE] if v[0].example.landmarks5 is not None
        ]
        if not sources:
            self.identity = {**self.identity, "enabled": False, "reason": "no source landmarks"}
            logger.warning("IDENTITY LOSS (Eq. 7) IS OFF: no source image has landmarks5")
            self.face_encoder = None
            return
        with torch.no_grad():
            images = torch.stack([e.image for e in sources]).to(self.device)
            marks = torch.stack([e.landmarks5 for e in sources]).float().to(self.device)
            self.source_embedding = F.normalize(self.face_encoder(images, marks).mean(0), dim=-1)

    def _identity_autocast(self) -> Any:
        """The autocast context of the identity branch (``identity.autocast_dtype``)."""
        import contextlib

        wanted = self.config.identity.autocast_dtype
        kind = self.device.type
        if wanted == "none":
            return contextlib.nullcontext()
        if wanted == "fp16" and kind != "cuda":
            self._warn_once("identity.autocast_dtype fp16 needs CUDA; identity branch left as is")
            return contextlib.nullcontext()
        if kind not in ("cpu", "cuda"):
            self._warn_once(f"identity.autocast_dtype {wanted} not supported on {kind}; off")
            return contextlib.nullcontext()
        if wanted == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
            self._warn_once("this GPU has no bfloat16; identity.autocast_dtype bf16 left off")
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if wanted == "bf16" else torch.float16
        return torch.autocast(device_type=kind, dtype=dtype)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    def _identity_term(
        self, noisy: Tensor, pred: Tensor, timesteps: Tensor, example: TrainingExample
    ) -> Tensor:
        """Eq. 7 on the one-step x0 estimate: decode (the whole latent, or only the face's
        latent window, ``identity.decode_region``; by the VAE or TAESD, ``identity.decoder``),
        align by the 5 landmarks (fp32) and embed with ArcFace; decode and ArcFace under
        ``identity.autocast_dtype``."""
        from magicapture_pipeline.core.arcface import align_faces, face_latent_window

        cfg = self.config.identity
        x0 = losses.one_step_x0_estimate(
            noisy,
            pred,
            timesteps,
            self.noise_scheduler.alphas_cumprod,
            self.noise_scheduler.config.prediction_type,
        )
        marks = example.landmarks5.float().unsqueeze(0).to(self.device)
        if cfg.decode_region == "face_window":
            factor = self.latent_factor
            top, bottom, left, right = face_latent_window(
                marks, tuple(x0.shape[-2:]), latent_factor=factor, margin=cfg.window_margin
            )
            x0 = x0[..., top:bottom, left:right]
            # landmarks into the decoded window's pixel frame
            marks = marks - marks.new_tensor([left * factor, top * factor])
        with self._identity_autocast():
            image = self._decode_for_identity(x0)
        # the similarity warp stays fp32 (bf16 grid coordinates would be off by ~1 px)
        with torch.autocast(device_type=self.device.type, enabled=False):
            aligned = align_faces(image.float(), marks)
        with self._identity_autocast():
            features = self.face_encoder.backbone(aligned)
        embedding = F.normalize(features.float(), dim=-1)
        return losses.identity_loss(embedding, self.source_embedding)

    def _decode_for_identity(self, latents: Tensor) -> Tensor:
        """Pixels (about [-1, 1]) of the scaled ``latents`` the UNet sees: the base VAE, or TAESD
        when configured (its ``scaling_factor`` is 1: it reads those latents as they are)."""
        if self.identity_decoder is not None:
            decoder = self.identity_decoder
            scale = float(decoder.config.scaling_factor)
            return decoder.decode(latents.to(decoder.dtype) / scale).sample
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample

    def _identity_ready(self, example: TrainingExample) -> bool:
        return self.face_encoder is not None and example.landmarks5 is not None

    # attention refocusing (Eq. 8) ---------------------------------------------------------
    def _token_positions(self, ids: Tensor) -> list[tuple[int, int]]:
        """``[(position in the 77 tokens, index into self.tokens)]`` of placeholders present."""
        found = []
        row = ids[0].tolist()
        for k, token_id in enumerate(self.token_ids):
            if token_id in row:
                found.append((row.index(token_id), k))
        return found

    def _attention_term(self, ids: Tensor, example: TrainingExample) -> Tensor | None:
        """Eq. 8 for the placeholders in the prompt; a token whose region is empty (a reference
        without a face has no region for [V1]) is left out rather than pushed off the image."""
        if self.capture is None:
            return None
        has_face = bool(example.face_mask.sum() > 0)
        has_rest = bool((1.0 - example.face_mask).sum() > 0)
        positions = [
            (p, k) for p, k in self._token_positions(ids) if (has_face if k == 0 else has_rest)
        ]
        if not positions:
            return None
        maps = self.capture.token_maps([[p for p, _ in positions]])
        masks = torch.cat(
            [self._region_mask(example, inside_face=k == 0) for _, k in positions], dim=1
        )
        return losses.attention_refocusing_loss(maps.float(), masks.float())

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
        ids, hidden = self._encode_prompt(prompt)
        pred = self.unet(noisy, timesteps, hidden).sample
        mask = self._region_mask(example, inside_face=task == SOURCE)
        recon = losses.masked_reconstruction_loss(
            pred.float(), self._target(latents, noise, timesteps).float(), mask
        )
        total = recon
        terms = {"loss_recon": recon.item(), "loss_attn": 0.0, "loss_id": 0.0, "id_active": 0.0}
        attention = self._attention_term(ids, example)
        if attention is not None:
            total = total + cfg.attention.weight * attention
            terms["loss_attn"] = attention.item()
        if task == COMPOSED and self._identity_ready(example):
            identity = self._composed_identity(
                noisy, pred, timesteps, latents=latents, hidden=hidden, example=example
            )
            if identity is not None:
                total = total + cfg.identity.weight * identity
                terms["loss_id"], terms["id_active"] = identity.item(), 1.0
        terms["loss"] = total.item()
        return total, terms, task

    def _composed_identity(
        self,
        noisy: Tensor,
        pred: Tensor,
        timesteps: Tensor,
        *,
        latents: Tensor,
        hidden: Tensor,
        example: TrainingExample,
    ) -> Tensor | None:
        """Eq. 7 for a composed micro-batch.

        ``single_pass``: from the same UNet forward when ``t < T'``. ``two_pass`` (official): a
        second UNet forward at a fresh ``t < T'`` and fresh noise, every composed micro-batch.
        """
        cfg = self.config.identity
        total_t = self.noise_scheduler.config.num_train_timesteps
        if cfg.mode == "single_pass":
            if not bool(losses.identity_loss_active(timesteps, total_t, cfg.threshold_fraction)):
                return None
            return self._identity_term(noisy, pred, timesteps, example)
        limit = max(int(cfg.threshold_fraction * total_t), 1)
        noisy2, _, timesteps2 = self._noisy(latents, _pick(self.generator, limit))
        pred2 = self.unet(noisy2, timesteps2, hidden).sample
        return self._identity_term(noisy2, pred2, timesteps2, example)

    # checkpoints, heatmaps, results -------------------------------------------------------
    def _trainable(self) -> dict[str, Tensor]:
        tensors = {f"unet.{n}": p for n, p in self.unet.named_parameters() if p.requires_grad}
        tensors.update(
            {f"text_encoder.{n}": p for n, p in self.text_encoder.named_parameters() if "lora" in n}
        )
        tensors["token_embedding"] = embedding_matrix(self.text_encoder)
        return tensors

    def _after_step(self, row: dict[str, Any]) -> None:
        every = self.config.heatmap_every
        last = self.global_step == self.config.max_steps and not self.heatmaps
        if (every and self.global_step % every == 0) or (every and last):
            report = self.attention_report()
            self.heatmaps[f"step_{self.global_step:06d}"] = heatmap_figure(report, self.global_step)
            row["v1_mass_in_face"] = report["v1_mass_in_face"]
            row["v2_mass_outside_face"] = report["v2_mass_outside_face"]

    @torch.no_grad()
    def attention_report(
        self,
        role: str = REFERENCE,
        timestep_fraction: float = 0.5,
        seed: int = 1234,
        max_examples: int = 8,
    ) -> dict[str, Any]:
        """[V1]/[V2] cross-attention maps on fixed inputs, and how much mass is in each region.

        ``role="reference"``: the composed prompt over the reference images (the pseudo-label
        task); ``role="source"``: the source prompt over the source images. Each image (not
        flipped, at most ``max_examples``) is noised to ``t = timestep_fraction * T`` with noise
        from ``seed`` (never the training generator, so training is unaffected) and run through
        the UNet once while the configured attention layers are captured.

        Returns:
            ``v1_mass_in_face``: mean over images that have a face of the share of [V1]'s
            attention inside the face mask; ``v2_mass_outside_face``: the same for [V2] outside
            it (over all images; NaN when the prompt lacks the token);
            ``v1_scaled_mass_in_face``: the same share for the min-max scaled [V1] map (what
            Eq. 8 sees); ``v1_peak_in_face``: share of those images whose [V1] maximum lies in
            the face; ``attention_loss``: Eq. 8 on these maps; ``maps`` (N, 2, h, w) with
            zeros for an absent token; ``face_masks`` (N, 1, h, w) at map size; ``images``.
        """
        from magicapture_pipeline.core.attention import CrossAttentionCapture

        cfg = self.config
        person, style = cfg.tokens.person, cfg.tokens.style
        if role == REFERENCE:
            prompt = cfg.composed_templates[0].format(v1=person, v2=style)
        else:
            prompt = cfg.source_templates[0].format(person)
        generator = torch.Generator().manual_seed(seed)
        ids, hidden = self._encode_prompt(prompt)
        positions = self._token_positions(ids)
        t = int(timestep_fraction * self.noise_scheduler.config.num_train_timesteps)
        timesteps = torch.tensor([t], device=self.device)
        own = self.capture is None
        capture = self.capture or CrossAttentionCapture(
            self.unet, resolution=cfg.attention.resolution
        )
        if own:
            capture.install()
        maps, masks, images = [], [], []
        try:
            for variants in self.variants[role][:max_examples]:
                variant = variants[0]
                mean = variant.latent_mean
                if mean is None:
                    mean, _ = self._encode(variant.example.image)
                latents = (mean * self.scaling).to(self.device)
                noise = torch.randn(latents.shape, generator=generator).to(self.device)
                self.unet(
                    self.noise_scheduler.add_noise(latents, noise, timesteps), timesteps, hidden
                )
                picked = capture.token_maps([[p for p, _ in positions]]).float().cpu()[0]
                both = torch.zeros(2, *picked.shape[-2:])
                for row, (_, k) in enumerate(positions):
                    both[k] = picked[row]
                maps.append(both)
                mask = variant.example.face_mask.unsqueeze(0).float()
                masks.append(F.interpolate(mask, size=picked.shape[-2:], mode="area")[0])
                images.append(variant.example.image)
        finally:
            if own:
                capture.remove()
            else:
                capture.clear()
        stacked, face = torch.stack(maps), torch.stack(masks)
        present = {k for _, k in positions}
        has_face = face.flatten(1).sum(1) > 0
        v1 = float("nan")
        if 0 in present and bool(has_face.any()):
            v1 = mass_fraction(stacked[has_face, 0:1], face[has_face])
        v2 = mass_fraction(stacked[:, 1:2], 1.0 - face) if 1 in present else float("nan")
        scaled = losses.min_max_scale(stacked)
        v1_scaled = v1_peak = float("nan")
        if 0 in present and bool(has_face.any()):
            v1_scaled = mass_fraction(scaled[has_face, 0:1], face[has_face])
            peak = stacked[has_face, 0].flatten(1).argmax(1)
            v1_peak = float(
                (face[has_face, 0].flatten(1).gather(1, peak[:, None]) > 0.5).float().mean()
            )
        regions = torch.cat([face, 1.0 - face], dim=1)
        keep = sorted(present)
        return {
            "v1_mass_in_face": v1,
            "v2_mass_outside_face": v2,
            "v1_scaled_mass_in_face": v1_scaled,
            "v1_peak_in_face": v1_peak,
            "attention_loss": float(
                losses.attention_refocusing_loss(stacked[:, keep], regions[:, keep])
            ),
            "maps": stacked,
            "face_masks": face,
            "images": torch.stack(images),
        }

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
        metadata = {
            "stage": self.stage,
            "base_model": base_model,
            "resolution": resolution,
            "preset": cfg.lora.preset,
            "lora_rank": cfg.lora.rank,
            "lora_alpha": cfg.lora.alpha,
            "unet_lora_modules": len(lora_module_names(self.unet)),
            "text_encoder_lora_modules": len(lora_module_names(self.text_encoder)),
            "identity_loss": self.identity,
            "attention_refocusing": {
                "enabled": cfg.attention.enabled,
                "weight": cfg.attention.weight,
                "resolution": cfg.attention.resolution,
            },
            "steps": self.global_step,
            "seed": cfg.seed,
        }
        return TrainingResult(
            embeddings=self.placeholder_embeddings(),
            history=list(self.history),
            heatmaps=dict(self.heatmaps),
            unet_lora={k: v.detach().cpu().contiguous() for k, v in unet_lora.items()},
            text_encoder_lora=(
                {k: v.detach().cpu().contiguous() for k, v in text_lora.items()}
                if text_lora
                else None
            ),
            metadata=metadata,
        )


def mass_fraction(maps: Tensor, regions: Tensor) -> float:
    """Share of the attention mass of ``maps`` (N, 1, h, w) that lies inside ``regions``."""
    total = maps.flatten(1).sum(1).clamp_min(1e-12)
    inside = (maps * regions).flatten(1).sum(1)
    return float((inside / total).mean())


def _figure_image(fig: Any, dpi: int) -> Any:
    """Render a matplotlib figure to an RGB PIL image and close it."""
    from matplotlib import pyplot as plt
    from PIL import Image

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def heatmap_figure(report: Mapping[str, Any], step: int) -> Any:
    """A PIL image: per reference image, the picture, [V1] map, face mask, [V2] map, non-face."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    maps, face, images = report["maps"], report["face_masks"], report["images"]
    rows = min(len(maps), 4)
    titles = ["image", "[V1] map", "face mask", "[V2] map", "non-face mask"]
    fig, axes = plt.subplots(rows, 5, figsize=(10, 2.1 * rows), squeeze=False)
    for r in range(rows):
        panels = [
            ((images[r].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(),
            maps[r, 0].numpy(),
            face[r, 0].numpy(),
            maps[r, 1].numpy(),
            1 - face[r, 0].numpy(),
        ]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            if c == 0:
                ax.imshow(panel)
            elif c in (2, 4):  # masks on a fixed 0..1 scale (an all-ones mask stays bright)
                ax.imshow(panel, cmap="viridis", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(panel, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.suptitle(
        f"step {step}: [V1] mass in face {report['v1_mass_in_face']:.3f}, "
        f"[V2] mass outside face {report['v2_mass_outside_face']:.3f}",
        fontsize=9,
    )
    return _figure_image(fig, dpi=80)


def loss_curves_figure(history: pd.DataFrame, title: str, smooth: int = 10) -> Any:
    """A PIL image of every loss term against the optimiser step (raw, and a running mean).

    Args:
        history: the per-step table a trainer returns (``step`` plus ``loss*`` columns).
        title: the figure title (e.g. the stage).
        smooth: window of the running mean drawn over the raw curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    columns = [c for c in history.columns if c.startswith("loss")]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for column in columns:
        values = pd.to_numeric(history[column], errors="coerce")
        (line,) = ax.plot(history["step"], values, alpha=0.25, linewidth=0.8)
        ax.plot(
            history["step"],
            values.rolling(smooth, min_periods=1).mean(),
            color=line.get_color(),
            label=column,
        )
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    if columns:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _figure_image(fig, dpi=90)


def _materialise(value: Any) -> Any:
    """A partition value: the object itself or, for lazy partitions, what calling it returns."""
    return value() if callable(value) else value


def _landmarks(value: Any) -> Tensor | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else None
    return None if value is None else torch.tensor(value, dtype=torch.float32).reshape(5, 2)


def example_from_images(
    ident: str, role: str, image: Any, latent_mask: Any, landmarks5: Any = None
) -> TrainingExample:
    """A :class:`TrainingExample` from a PIL crop and a PIL (mode L, 255 = face) latent mask."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    mask = np.asarray(latent_mask.convert("L"), dtype=np.float32) / 255.0
    return TrainingExample(
        id=str(ident),
        role=str(role),
        image=torch.from_numpy(pixels).permute(2, 0, 1).contiguous(),
        face_mask=torch.from_numpy(mask).unsqueeze(0),
        landmarks5=_landmarks(landmarks5),
    )


def examples_from_training_set(
    training_set: Mapping[str, Any],
    face_crops: Mapping[str, Any],
    face_masks: Mapping[str, Any],
) -> list[TrainingExample]:
    """The accepted items of ``training_set`` as examples (catalog contract of the preprocess
    pipeline): the crop under ``item["crop"]`` (default ``<role>/<id>``), the latent mask under
    ``item["latent_mask"]`` (default ``latent/<role>/<id>``; else the image mask ``item["mask"]`` /
    ``image/<role>/<id>`` area-downsampled x8), ``landmarks5`` in crop pixels.

    Partition values may be loaded objects or the lazy callables ``PartitionedDataset`` returns.
    """
    items = training_set.get("items") if isinstance(training_set, Mapping) else None
    if not items:
        raise ValueError("training_set lists no accepted items: nothing to train on")
    examples = []
    for item in items:
        role, ident = str(item["role"]), str(item["id"])
        crop_key = str(item.get("crop") or f"{role}/{ident}")
        if crop_key not in face_crops:
            raise KeyError(f"face_crops has no {crop_key}")
        image = _materialise(face_crops[crop_key])
        latent_key = str(item.get("latent_mask") or f"latent/{role}/{ident}")
        image_key = str(item.get("mask") or f"image/{role}/{ident}")
        if latent_key in face_masks:
            mask = _materialise(face_masks[latent_key])
        elif image_key in face_masks:
            from PIL import Image

            full = _materialise(face_masks[image_key]).convert("L")
            size = (max(full.width // 8, 1), max(full.height // 8, 1))
            mask = full.resize(size, Image.Resampling.BOX)
        else:
            raise KeyError(f"face_masks has no {latent_key} (nor {image_key})")
        examples.append(example_from_images(ident, role, image, mask, item.get("landmarks5")))
    return examples
