"""What each part of MagiCapture costs per step, against its baseline, in one run (``make bench``).

``python -m magicapture_pipeline.speed_bench`` measures, for each model size, one optimiser step of

* stage one (embeddings only, masked loss) with cached latents and with a VAE encode every step;
* stage two (LoRA + embeddings, composed-prompt task with the non-face mask):
  ``plain`` (masked loss only, SDPA everywhere), ``full`` (+ attention refocusing, Eq. 8, capture
  at one attn2 resolution), ``id_single_pass`` (``full`` + identity loss, Eq. 7, from the same UNet
  forward) and ``id_two_pass`` (``full`` + identity from a second UNet forward, as the official
  code does);

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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from magicapture_pipeline.core.models import SD15_TEXT, SD15_UNET, SD15_VAE
from magicapture_pipeline.core.sdxl import SDXL_TEXT, SDXL_TEXT_2, SDXL_UNET, SDXL_VAE

REPORT_DIR = Path("data/08_reporting")
GOALS = {
    "stage2_full_over_plain": 1.15,
    "id_single_pass_over_no_id": 1.3,
    "cached_over_uncached_stage1": 0.7,
}
PREPROCESS_GOAL = 100.0
PERSON, STYLE = "<v1>", "<v2>"
SOURCE_PROMPT = "a photo of a <v1> person"
COMPOSED_PROMPT = "a photo of a <v1> person in the <v2> style"
AR_WEIGHT = 2.5  # paper
ID_WEIGHT = 1.0  # paper
ID_THRESHOLD = 0.8  # paper: T' = 0.8 T
ALIGNED_SHARE = 0.53  # side of ArcFace's aligned square / side of the training crop
AR_RESOLUTION = 16  # the attn2 layers the official code reads (16x16 for SD 1.5 at 512 px)


@dataclass(frozen=True)
class SizeSpec:
    """One model size of the benchmark."""

    description: str
    resolution: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    arcface_arch: str
    repeats: int
    warmup: int = 1
    stage_one: bool = True
    gpu_only: bool = False  # left out of the default sizes on CPU (minutes per step there)
    family: str = "sd15"  # sdxl: two text encoders (``text`` and ``text_2``), text_time UNet
    text_2: dict[str, Any] = field(default_factory=dict)
    ar_resolution: int | None = None  # Eq. 8's attn2 side; None = 16 when present (SD 1.5)


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        description="the demo's tiny random SD (core.models.build_tiny_sd defaults) at 128 px",
        resolution=128,
        unet={},
        vae={},
        text={},
        arcface_arch="r100",
        repeats=15,
        warmup=2,
    ),
    "sd_like_256": SizeSpec(
        description="an SD-like model (SD block layout, channels 64-256, x8 VAE) at 256 px",
        resolution=256,
        unet={**SD15_UNET, "block_out_channels": (64, 128, 256, 256), "cross_attention_dim": 256},
        vae={
            "block_out_channels": (32, 64, 128, 128),
            "layers_per_block": 2,
            "norm_num_groups": 32,
        },
        text={
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        arcface_arch="r100",
        repeats=7,
    ),
    "sd15_unet_256": SizeSpec(
        description="SD 1.5's UNet, VAE and CLIP-L text encoder architectures, random weights, "
        "at 256 px",
        resolution=256,
        unet=SD15_UNET,
        vae=SD15_VAE,
        text=SD15_TEXT,
        arcface_arch="r100",
        repeats=5,
    ),
    "sd15_512": SizeSpec(
        description="SD 1.5's UNet, VAE and CLIP-L text encoder architectures, random weights, "
        "at 512 px (the paper's resolution; a GPU size)",
        resolution=512,
        unet=SD15_UNET,
        vae=SD15_VAE,
        text=SD15_TEXT,
        arcface_arch="r100",
        repeats=10,
        warmup=3,
        gpu_only=True,
    ),
    "sdxl_like_256": SizeSpec(
        description="an SDXL-like model (SDXL's block layout and 1/2/10 transformer depths, "
        "channels 64-256, two text encoders 128 + 256, text_time conditioning, x8 VAE) at 256 px",
        resolution=256,
        unet={
            **SDXL_UNET,
            "block_out_channels": (64, 128, 256),
            "attention_head_dim": (2, 4, 8),
            "cross_attention_dim": 128 + 256,
            "addition_time_embed_dim": 64,
            "projection_class_embeddings_input_dim": 6 * 64 + 256,
        },
        vae={
            "block_out_channels": (32, 64, 128, 128),
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "scaling_factor": SDXL_VAE["scaling_factor"],
        },
        text={"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
              "num_attention_heads": 4},
        text_2={"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                "num_attention_heads": 4, "projection_dim": 256, "hidden_act": "gelu"},
        arcface_arch="r100",
        repeats=5,
        family="sdxl",
        ar_resolution=8,  # 1/32 of the side, SDXL's deepest level (its 32 at 1024 px)
    ),  # fmt: skip
    "sdxl_1024": SizeSpec(
        description="SDXL base's UNet, VAE and both text encoders' architectures, random "
        "weights, at 1024 px (SDXL's resolution; a GPU size)",
        resolution=1024,
        unet=SDXL_UNET,
        vae=SDXL_VAE,
        text=SDXL_TEXT,
        text_2=SDXL_TEXT_2,
        arcface_arch="r100",
        repeats=10,
        warmup=3,
        gpu_only=True,
        family="sdxl",
        ar_resolution=32,  # down_blocks.2 + up_blocks.0, as the sdxl env reads
    ),
}


def default_sizes(device: str) -> list[str]:
    """Every size on a GPU; on CPU the sizes that take seconds, not minutes, per step."""
    on_gpu = torch.device(device).type == "cuda"
    return [name for name, spec in SIZES.items() if on_gpu or not spec.gpu_only]


# --------------------------------------------------------------------------- models


@dataclass
class BenchModel:
    """The components one size trains, plus the synthetic batch."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any
    resolution: int
    info: dict[str, Any] = field(default_factory=dict)
    family: str = "sd15"
    tokenizer_2: Any = None
    text_encoder_2: Any = None
    ar_resolution: int | None = None


def _tiny_model(spec: SizeSpec) -> BenchModel:
    from magicapture_pipeline.config.training import TinyModelConfig
    from magicapture_pipeline.core.models import build_tiny_sd, load_components

    config = TinyModelConfig(sample_size=spec.resolution)
    with tempfile.TemporaryDirectory() as folder:
        build_tiny_sd(Path(folder) / "tiny_sd", config)
        parts = load_components(Path(folder) / "tiny_sd")
    return BenchModel(
        parts.tokenizer,
        parts.text_encoder,
        parts.vae,
        parts.unet,
        parts.noise_scheduler,
        spec.resolution,
        {"tiny_config": config.model_dump()},
    )


def _random_model(spec: SizeSpec) -> BenchModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from magicapture_pipeline.core.models import build_offline_tokenizer
    from magicapture_pipeline.core.sdxl import SECOND_PAD_TOKEN

    def text_config(tok: Any, settings: dict[str, Any]) -> CLIPTextConfig:
        return CLIPTextConfig(
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **{**settings, "vocab_size": len(tok)},
        )

    torch.manual_seed(0)
    tokenizer = build_offline_tokenizer()
    text_encoder = CLIPTextModel(text_config(tokenizer, spec.text))
    tokenizer_2 = text_encoder_2 = None
    if spec.family == "sdxl":
        tokenizer_2 = build_offline_tokenizer(pad_token=SECOND_PAD_TOKEN)
        text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, spec.text_2))
    levels = len(spec.vae["block_out_channels"])
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        **{"sample_size": spec.resolution, **spec.vae},
    )
    unet_config = dict(spec.unet)
    if spec.family == "sdxl":  # ar_resolution counts the latents this size really trains on
        unet_config["sample_size"] = spec.resolution // 8
    unet = UNet2DConditionModel(**unet_config)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )
    for module in (text_encoder, text_encoder_2, vae, unet):
        if module is not None:
            module.requires_grad_(False)
    return BenchModel(
        tokenizer, text_encoder, vae, unet, scheduler, spec.resolution,
        family=spec.family, tokenizer_2=tokenizer_2, text_encoder_2=text_encoder_2,
        ar_resolution=spec.ar_resolution,
    )  # fmt: skip


def build_model(name: str) -> BenchModel:
    """Build the components of benchmark size ``name`` (random weights, seeded)."""
    spec = SIZES[name]
    model = _tiny_model(spec) if name == "tiny" else _random_model(spec)
    model.info["parameters_m"] = {
        part: round(sum(p.numel() for p in getattr(model, part).parameters()) / 1e6, 2)
        for part in ("unet", "vae", "text_encoder", "text_encoder_2")
        if getattr(model, part) is not None
    }
    return model


# --------------------------------------------------------------------------- one training step


def _face_mask(resolution: int) -> torch.Tensor:
    """An ellipse face mask ``(1, 1, R, R)`` in the middle of the image."""
    axis = torch.linspace(-1.0, 1.0, resolution)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return ((xx / 0.45) ** 2 + (yy / 0.6) ** 2 <= 1.0).float()[None, None]


class StepBench:
    """One size's training steps, built from the core functions, ready to be timed (CPU only)."""

    def __init__(self, model: BenchModel, arcface_arch: str) -> None:
        from magicapture_pipeline.core.arcface import FaceIdentityEncoder, build_iresnet
        from magicapture_pipeline.core.models import build_tiny_autoencoder

        if model.family != "sd15":
            raise ValueError(
                f"the harness engine assembles SD 1.x steps only; {model.family} sizes run "
                "through the trainers (--engine trainer)"
            )
        self.m = model
        self.device = torch.device("cpu")
        self.mixed_precision = "no"
        self.tiny_decoder = build_tiny_autoencoder()
        tokenizer = model.tokenizer
        tokenizer.add_tokens([PERSON, STYLE])
        model.text_encoder.resize_token_embeddings(len(tokenizer))
        self.embeddings = model.text_encoder.get_input_embeddings().weight
        self.placeholder_ids = tokenizer.convert_tokens_to_ids([PERSON, STYLE])
        self.frozen_rows = torch.ones(self.embeddings.shape[0], dtype=torch.bool)
        self.frozen_rows[self.placeholder_ids] = False
        self.original_rows = self.embeddings.detach().clone()

        def ids(prompt: str) -> torch.Tensor:
            return tokenizer(
                prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            ).input_ids

        self.source_ids, self.composed_ids = ids(SOURCE_PROMPT), ids(COMPOSED_PROMPT)
        positions = [self.composed_ids[0].tolist().index(i) for i in self.placeholder_ids]
        self.token_positions = torch.tensor([positions])

        resolution = model.resolution
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1
        face = _face_mask(resolution)
        latent = resolution // 8
        self.face_latent = torch.nn.functional.adaptive_avg_pool2d(face, latent)
        self.region_masks = torch.cat([self.face_latent, 1 - self.face_latent], dim=1)
        self.scaling = float(model.vae.config.scaling_factor)
        with torch.no_grad():
            self.latents = model.vae.encode(self.pixels).latent_dist.sample() * self.scaling
        self.landmarks = _bench_landmarks(resolution)
        self.identity = FaceIdentityEncoder(build_iresnet(arcface_arch))
        self.encoder = self.identity
        with torch.no_grad():
            self.source_embedding = self.identity(self.pixels, self.landmarks)[0]
        self.alphas_cumprod = model.scheduler.alphas_cumprod
        self.num_timesteps = int(model.scheduler.config.num_train_timesteps)
        self.capture: Any = None
        self.minimum: dict[str, float] = {}
        self.peak_gpu_mb: dict[str, float] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage = ""

    # setup of the two stages ------------------------------------------------------------
    def setup_stage_one(self) -> None:
        """Only the embedding matrix trains (frozen rows restored after each step)."""
        self.m.text_encoder.requires_grad_(False)
        self.embeddings.requires_grad_(True)
        self.optimizer = torch.optim.AdamW([self.embeddings], lr=5e-4)
        self.m.unet.train()
        self.stage = "one"

    def setup_stage_two(self) -> None:
        """peft LoRA (paper preset: cross-attention projections) + the embeddings."""
        from peft import LoraConfig

        from magicapture_pipeline.core.attention import CrossAttentionCapture

        self.m.unet.add_adapter(
            LoraConfig(
                r=4,
                lora_alpha=4,
                init_lora_weights="gaussian",
                target_modules=["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"],
            )
        )
        lora = [p for p in self.m.unet.parameters() if p.requires_grad]
        self.embeddings.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            [{"params": lora, "lr": 1e-4}, {"params": [self.embeddings], "lr": 1e-5}]
        )
        self.m.unet.train()
        try:
            self.capture = CrossAttentionCapture(self.m.unet, resolution=AR_RESOLUTION)
        except ValueError:
            self.capture = CrossAttentionCapture(self.m.unet)
        self.stage = "two"

    # the steps --------------------------------------------------------------------------
    def _noisy(self, latents: torch.Tensor, max_t: int) -> tuple[torch.Tensor, ...]:
        noise = torch.randn_like(latents)
        t = torch.randint(0, max_t, (latents.shape[0],))
        return self.m.scheduler.add_noise(latents, noise, t), noise, t

    def _identity_term(
        self,
        noisy: torch.Tensor,
        pred: torch.Tensor,
        t: torch.Tensor,
        crop: bool = False,
        bf16: bool = False,
        tiny: bool = False,
    ) -> torch.Tensor:
        from magicapture_pipeline.config.training import IdentityConfig
        from magicapture_pipeline.core.arcface import face_latent_window
        from magicapture_pipeline.core.losses import identity_loss, one_step_x0_estimate

        x0 = one_step_x0_estimate(noisy, pred, t, self.alphas_cumprod)
        landmarks = self.landmarks
        if crop:
            margin = IdentityConfig().window_margin
            top, bottom, left, right = face_latent_window(
                landmarks, tuple(x0.shape[-2:]), margin=margin
            )
            x0 = x0[..., top:bottom, left:right]
            landmarks = landmarks - torch.tensor([left * 8.0, top * 8.0])
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            if tiny:  # TAESD reads the scaled latents (scaling_factor 1)
                image = self.tiny_decoder.decode(x0).sample
            else:
                image = self.m.vae.decode(x0 / self.scaling).sample
            embedding = self.identity(image, landmarks)
        return identity_loss(embedding.float(), self.source_embedding)

    def _finish(self, loss: torch.Tensor) -> float:
        assert self.optimizer is not None
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.embeddings[self.frozen_rows] = self.original_rows[self.frozen_rows]
        return float(loss.detach())

    def stage_one_step(self, cached: bool) -> float:
        """Stage one on a source image: Eq. 4 with the face mask."""
        from magicapture_pipeline.core.losses import masked_reconstruction_loss

        if cached:
            latents = self.latents
        else:
            with torch.no_grad():
                latents = self.m.vae.encode(self.pixels).latent_dist.sample() * self.scaling
        noisy, noise, t = self._noisy(latents, self.num_timesteps)
        text = self.m.text_encoder(self.source_ids)[0]
        pred = self.m.unet(noisy, t, text).sample
        return self._finish(masked_reconstruction_loss(pred, noise, self.face_latent))

    def stage_two_step(self, refocus: bool, identity: str) -> float:
        """Stage two, composed-prompt task (Eq. 6), optionally + Eq. 8 and Eq. 7.

        Args:
            refocus: add the attention refocusing loss (capture installed by the caller).
            identity: ``off``, ``single_pass``, ``single_pass_crop`` (decode only the face's
                latent window, ``core.arcface.face_latent_window``), ``single_pass_crop_bf16``
                (the same, decode and ArcFace under CPU bfloat16 autocast),
                ``single_pass_crop_bf16_tiny`` (the same, TAESD decoding) or ``two_pass``.
        """
        from magicapture_pipeline.core.losses import (
            attention_refocusing_loss,
            masked_reconstruction_loss,
        )

        max_t = self.num_timesteps if identity == "off" else int(ID_THRESHOLD * self.num_timesteps)
        noisy, noise, t = self._noisy(self.latents, max_t)
        text = self.m.text_encoder(self.composed_ids)[0]
        pred = self.m.unet(noisy, t, text).sample
        loss = masked_reconstruction_loss(pred, noise, 1 - self.face_latent)
        if refocus:
            maps = self.capture.token_maps(self.token_positions)
            loss = loss + AR_WEIGHT * attention_refocusing_loss(maps, self.region_masks)
        if identity.startswith("single_pass"):
            flags = {flag: flag in identity for flag in ("crop", "bf16", "tiny")}
            loss = loss + ID_WEIGHT * self._identity_term(noisy, pred, t, **flags)
        elif identity == "two_pass":
            noisy2, _, t2 = self._noisy(self.latents, max_t)
            if self.capture is not None:
                self.capture.enabled = False
            pred2 = self.m.unet(noisy2, t2, text).sample
            if self.capture is not None:
                self.capture.enabled = True
            # the trainer's defaults (face window, bf16), as in TrainerBench
            loss = loss + ID_WEIGHT * self._identity_term(noisy2, pred2, t2, crop=True, bf16=True)
        return self._finish(loss)

    def variant(self, name: str) -> tuple[Callable[[], float], contextlib.AbstractContextManager]:
        """The step function of a figure and the context it runs in (capture on or off)."""
        capture = self.capture if self.stage == "two" else None
        with_capture = capture if capture is not None else contextlib.nullcontext()
        table: dict[str, tuple[Callable[[], float], Any]] = {
            "stage1_step_s": (lambda: self.stage_one_step(True), _stage_one_context(self)),
            "stage1_uncached_step_s": (
                lambda: self.stage_one_step(False),
                _stage_one_context(self),
            ),
            "plain_lora_step_s": (
                lambda: self.stage_two_step(False, "off"),
                contextlib.nullcontext(),
            ),
            "stage2_full_step_s": (lambda: self.stage_two_step(True, "off"), with_capture),
            # the trainer's defaults: face window + bf16 (IdentityConfig)
            "stage2_id_single_pass_step_s": (
                lambda: self.stage_two_step(True, "single_pass_crop_bf16"),
                with_capture,
            ),
            "stage2_id_single_pass_window_fp32_step_s": (
                lambda: self.stage_two_step(True, "single_pass_crop"),
                with_capture,
            ),
            "stage2_id_single_pass_full_step_s": (
                lambda: self.stage_two_step(True, "single_pass"),
                with_capture,
            ),
            "stage2_id_single_pass_tiny_decoder_step_s": (
                lambda: self.stage_two_step(True, "single_pass_crop_bf16_tiny"),
                with_capture,
            ),
            "stage2_id_two_pass_step_s": (
                lambda: self.stage_two_step(True, "two_pass"),
                with_capture,
            ),
        }
        return table[name]


@contextlib.contextmanager
def _stage_one_context(bench: Any):
    """Stage one as it runs: once stage two is set up, its LoRA and capture are switched off."""
    capture = bench.capture if bench.stage == "two" else None
    if capture is None:
        yield
        return
    capture.enabled = False
    bench.m.unet.disable_adapters()
    try:
        yield
    finally:
        bench.m.unet.enable_adapters()
        capture.enabled = True


class TrainerBench:
    """The same figures measured with the project's own trainers (``core.training``).

    One :class:`StageOneTrainer` per latent mode (cached / encoded every step) and one
    :class:`StageTwoTrainer` (composed task only, gradient accumulation 1) whose switches are
    flipped between variants: the capture processor installed or not (Eq. 8), the ArcFace encoder
    attached or not and ``identity.mode`` (Eq. 7). ``identity.threshold_fraction`` is set to 1 so
    the identity branch runs on every step (its cost when active). The identity variants set
    ``identity.decode_region`` / ``identity.autocast_dtype``: the speed options (``face_window``,
    ``bf16``) for ``stage2_id_single_pass_step_s`` and ``two_pass``, ``face_window`` without
    autocast for ``..._window_fp32``, ``full`` without autocast (the paper's and authors' decode,
    the default) for ``..._full``, and the speed options with ``identity.decoder:
    tiny_autoencoder`` (a TAESD-architecture decoder, random weights) for ``..._tiny_decoder``.

    Args:
        model: the size's components (moved to ``device`` by the trainers).
        arcface_arch: IResNet of the identity loss.
        device: ``cpu`` or ``cuda[:n]``.
        mixed_precision: the trainers' ``mixed_precision`` (``no``/``fp16``/``bf16``; forced to
            ``no`` on CPU by ``core.training.build_accelerator``).
    """

    def __init__(
        self,
        model: BenchModel,
        arcface_arch: str,
        device: str = "cpu",
        mixed_precision: str = "no",
    ) -> None:
        from magicapture_pipeline.core.models import SDComponents
        from magicapture_pipeline.core.training import TrainingExample

        self.m = model
        self.arcface_arch = arcface_arch
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision if self.device.type == "cuda" else "no"
        self.tiny_decoder: Any = None
        self.components = SDComponents(
            model.tokenizer, model.text_encoder, model.vae, model.unet, model.scheduler, "bench",
            family=model.family, tokenizer_2=model.tokenizer_2,
            text_encoder_2=model.text_encoder_2,
        )  # fmt: skip
        resolution = model.resolution
        generator = torch.Generator().manual_seed(0)
        face = torch.nn.functional.adaptive_avg_pool2d(_face_mask(resolution), resolution // 8)
        landmarks = _bench_landmarks(resolution)[0]
        self.examples = [
            TrainingExample(
                f"{role}{index}",
                role,
                torch.rand(3, resolution, resolution, generator=generator) * 2 - 1,
                face[0].clone(),
                landmarks.clone(),
            )
            for role in ("source", "reference")
            for index in range(2)
        ]
        self.minimum: dict[str, float] = {}
        self.peak_gpu_mb: dict[str, float] = {}
        self.one: dict[bool, Any] = {}
        self.two: Any = None
        self.capture: Any = None
        self.encoder: Any = None
        self.stage = ""

    def setup_stage_one(self) -> None:
        """A cached and an uncached stage-one trainer on the same components."""
        from magicapture_pipeline.config.training import StageOneConfig
        from magicapture_pipeline.core.training import StageOneTrainer

        for cached in (True, False):
            config = StageOneConfig(
                gradient_accumulation_steps=1,
                cache_latents=cached,
                hflip=False,
                mixed_precision=self.mixed_precision,
                device=str(self.device),
            )
            self.one[cached] = StageOneTrainer(self.components, self.examples, config)
        self.stage = "one"

    def setup_stage_two(self) -> None:
        """One stage-two trainer, composed task only, AR and identity (random IResNet) on."""
        from magicapture_pipeline.config.training import (
            AttentionConfig,
            IdentityConfig,
            StageTwoConfig,
        )
        from magicapture_pipeline.core.attention import cross_attention_resolutions
        from magicapture_pipeline.core.models import build_tiny_autoencoder
        from magicapture_pipeline.core.training import StageTwoTrainer

        sizes = set(cross_attention_resolutions(self.m.unet).values())
        resolution = AR_RESOLUTION if AR_RESOLUTION in sizes else min(v for v in sizes if v >= 4)
        resolution = self.m.ar_resolution or resolution
        config = StageTwoConfig(
            gradient_accumulation_steps=1,
            task_weights=[0.0, 0.0, 1.0],
            hflip=False,
            mixed_precision=self.mixed_precision,
            device=str(self.device),
            heatmap_every=0,
            identity=IdentityConfig(
                mode="single_pass",
                random_init=True,
                arch=self.arcface_arch,
                threshold_fraction=1.0,
            ),
            attention=AttentionConfig(enabled=True, resolution=resolution),
        )
        self.two = StageTwoTrainer(self.components, self.examples, config)
        self.capture = self.two.capture
        self.encoder = self.two.face_encoder
        self.tiny_decoder = build_tiny_autoencoder().to(self.two.device)
        self.stage = "two"

    @contextlib.contextmanager
    def _switched(
        self,
        refocus: bool,
        identity: str,
        decode_region: str | None,
        autocast: str | None,
        decoder: str = "vae",
    ):
        trainer = self.two
        settings = trainer.config.identity
        saved = (settings.decode_region, settings.autocast_dtype)
        if refocus:
            self.capture.install()
            trainer.capture = self.capture
        else:
            self.capture.remove()
            trainer.capture = None
        trainer.face_encoder = self.encoder if identity != "off" else None
        if identity != "off":
            trainer.config.identity.mode = "two_pass" if identity == "two_pass" else "single_pass"
        if decode_region is not None:
            settings.decode_region = decode_region
        if autocast is not None:
            settings.autocast_dtype = autocast
        trainer.identity_decoder = self.tiny_decoder if decoder == "tiny_autoencoder" else None
        try:
            yield
        finally:
            settings.decode_region, settings.autocast_dtype = saved
            trainer.identity_decoder = None
            self.capture.install()
            trainer.capture = self.capture
            trainer.face_encoder = self.encoder

    def variant(self, name: str) -> tuple[Callable[[], Any], contextlib.AbstractContextManager]:
        """The step function of a figure and the context that configures the trainer for it."""
        if name in STAGE_ONE_FIGURES:
            return self.one[name == "stage1_step_s"].step, _stage_one_context(self)
        # (refocus, identity mode, decode_region, autocast_dtype[, decoder]); None = default
        switches = {
            "plain_lora_step_s": (False, "off", None, None),
            "stage2_full_step_s": (True, "off", None, None),
            "stage2_id_single_pass_step_s": (True, "single_pass", "face_window", None),
            "stage2_id_two_pass_step_s": (True, "two_pass", "face_window", None),
            "stage2_id_single_pass_window_fp32_step_s": (
                True, "single_pass", "face_window", "none",
            ),
            "stage2_id_single_pass_full_step_s": (True, "single_pass", "full", "none"),
            "stage2_id_single_pass_tiny_decoder_step_s": (
                True, "single_pass", "face_window", None, "tiny_autoencoder",
            ),
        }[name]  # fmt: skip
        return self.two.step, self._switched(*switches)


STAGE_ONE_FIGURES = ("stage1_step_s", "stage1_uncached_step_s")
STAGE_TWO_FIGURES = (
    "plain_lora_step_s",
    "stage2_full_step_s",
    "stage2_id_single_pass_step_s",
    "stage2_id_two_pass_step_s",
    "stage2_id_single_pass_window_fp32_step_s",
    "stage2_id_single_pass_full_step_s",
    "stage2_id_single_pass_tiny_decoder_step_s",
)
RATIOS = {
    "stage2_full_over_plain": ("stage2_full_step_s", "plain_lora_step_s"),
    "id_single_pass_over_no_id": ("stage2_id_single_pass_step_s", "stage2_full_step_s"),
    "id_two_pass_over_no_id": ("stage2_id_two_pass_step_s", "stage2_full_step_s"),
    "cached_over_uncached_stage1": ("stage1_step_s", "stage1_uncached_step_s"),
    "id_single_pass_window_fp32_over_no_id": (
        "stage2_id_single_pass_window_fp32_step_s",
        "stage2_full_step_s",
    ),
    "id_single_pass_full_over_no_id": ("stage2_id_single_pass_full_step_s", "stage2_full_step_s"),
    "id_single_pass_tiny_decoder_over_no_id": (
        "stage2_id_single_pass_tiny_decoder_step_s",
        "stage2_full_step_s",
    ),
}


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock reads finished steps (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_medians(
    bench: Any, names: tuple[str, ...], repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per step of each variant, run round-robin after warm-up.

    On CUDA each step is bracketed by ``torch.cuda.synchronize`` and the peak allocated GPU memory
    of each variant's last step goes to ``bench.peak_gpu_mb``.
    """
    device = bench.device
    on_gpu = device.type == "cuda"
    samples: dict[str, list[float]] = {name: [] for name in names}
    last = warmup + repeats - 1
    for round_index in range(warmup + repeats):
        for name in names:
            step, context = bench.variant(name)
            with context:
                if on_gpu and round_index == last:
                    torch.cuda.reset_peak_memory_stats(device)
                _synchronize(device)
                start = time.perf_counter()
                step()
                _synchronize(device)
                elapsed = time.perf_counter() - start
                if on_gpu and round_index == last:
                    bench.peak_gpu_mb[name] = torch.cuda.max_memory_allocated(device) / 2**20
            if round_index >= warmup:
                samples[name].append(elapsed)
    bench.minimum.update({name: min(values) for name, values in samples.items()})
    return {name: statistics.median(values) for name, values in samples.items()}


def _profile(bench: Any, name: str, rows: int = 8) -> dict[str, Any]:
    """Wall time and the top operators of one profiled step of ``name``: by self CPU time on
    CPU, by self GPU (device) time on CUDA."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = bench.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    step, context = bench.variant(name)
    with context:
        step()  # warm
        _synchronize(bench.device)
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            step()
            _synchronize(bench.device)
        wall = time.perf_counter() - start

    def self_us(event: Any) -> float:
        return float(event.self_device_time_total if on_gpu else event.self_cpu_time_total)

    events = sorted(prof.key_averages(), key=self_us, reverse=True)
    total = sum(self_us(e) for e in events) or 1.0
    top = [
        {
            "op": event.key,
            "self_cpu_s": round(self_us(event) / 1e6, 4),
            "share": round(self_us(event) / total, 3),
            "calls": event.count,
        }
        for event in events[:rows]
    ]
    return {
        "wall_s": round(wall, 4),
        "self_cpu_total_s": round(total / 1e6, 4),
        "clock": "self GPU time" if on_gpu else "self CPU time",
        "top": top,
    }


def _component_breakdown(
    model: BenchModel,
    encoder: Any,
    landmarks: torch.Tensor,
    repeats: int,
    tiny_decoder: Any = None,
    device: torch.device | None = None,
    mixed_precision: str = "no",
) -> dict[str, float]:
    """Median seconds of the parts a step is made of (each part alone, gradients as in a step,
    under the step's autocast on CUDA)."""
    device = device or torch.device("cpu")
    resolution = model.resolution
    generator = torch.Generator().manual_seed(1)
    pixels = (torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1).to(device)
    landmarks = landmarks.to(device)
    scaling = float(model.vae.config.scaling_factor)
    with torch.no_grad():
        latents = model.vae.encode(pixels).latent_dist.sample() * scaling
    latents.requires_grad_(True)
    image = pixels.clone().requires_grad_(True)
    ids = model.tokenizer(
        COMPOSED_PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    t = torch.tensor([500], device=device)
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=amp))
        if device.type == "cuda" and amp is not None
        else contextlib.nullcontext
    )
    # SDXL's VAE overflows in fp16: the trainers run it outside fp16 autocast, and so does this.
    vae_autocast = contextlib.nullcontext if model.family == "sdxl" else autocast

    def unet_fwd_bwd() -> None:
        with autocast():
            if model.text_encoder_2 is None:
                out = model.unet(latents, t, model.text_encoder(ids)[0]).sample
            else:
                from magicapture_pipeline.core import sdxl

                _, text, pooled = sdxl.encode_prompts(
                    (model.tokenizer, model.tokenizer_2),
                    (model.text_encoder, model.text_encoder_2),
                    [COMPOSED_PROMPT],
                    device,
                )
                added = sdxl.added_conditions(pooled, resolution, resolution)
                out = model.unet(latents, t, text, added_cond_kwargs=added).sample
        out.float().square().mean().backward()

    def vae_decode_fwd_bwd() -> None:
        with vae_autocast():
            out = model.vae.decode(latents / scaling).sample
        out.float().square().mean().backward()

    def tiny_decode_fwd_bwd() -> None:
        with autocast():
            out = tiny_decoder.decode(latents).sample
        out.float().square().mean().backward()

    def arcface_fwd_bwd() -> None:
        with autocast():
            out = encoder(image, landmarks)
        out.float().sum().backward()

    def vae_encode() -> None:
        with torch.no_grad(), vae_autocast():
            model.vae.encode(pixels).latent_dist.sample()

    parts = {
        "unet_fwd_bwd_s": unet_fwd_bwd,
        "vae_decode_fwd_bwd_s": vae_decode_fwd_bwd,
        "arcface_fwd_bwd_s": arcface_fwd_bwd,
        "vae_encode_s": vae_encode,
    }
    if tiny_decoder is not None:
        parts["tiny_decoder_fwd_bwd_s"] = tiny_decode_fwd_bwd
    samples: dict[str, list[float]] = {name: [] for name in parts}
    for round_index in range(1 + repeats):
        for name, part in parts.items():
            _synchronize(device)
            start = time.perf_counter()
            part()
            _synchronize(device)
            if round_index:
                samples[name].append(time.perf_counter() - start)
    encoders = [e for e in (model.text_encoder, model.text_encoder_2) if e is not None]
    for parameter in (*model.unet.parameters(), *(p for e in encoders for p in e.parameters())):
        parameter.grad = None
    return {name: round(statistics.median(values), 5) for name, values in samples.items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _figures(bench: Any, spec: SizeSpec) -> dict[str, float]:
    figures: dict[str, float] = {}
    if spec.stage_one:
        bench.setup_stage_one()
        figures.update(_interleaved_medians(bench, STAGE_ONE_FIGURES, spec.repeats, spec.warmup))
    bench.setup_stage_two()
    figures.update(_interleaved_medians(bench, STAGE_TWO_FIGURES, spec.repeats, spec.warmup))
    return figures


def measure_size(
    name: str,
    profile_missed: bool = True,
    engine: str = "trainer",
    device: str = "cpu",
    mixed_precision: str = "no",
) -> dict[str, Any]:
    """Every step figure of one size, its ratios, peak memory and profiles of missed goals.

    Args:
        name: a key of :data:`SIZES`.
        profile_missed: profile both steps of every ratio that misses its goal.
        engine: ``trainer`` (the project's ``core.training`` trainers) or ``harness`` (the steps
            assembled here from the core functions, CPU only); when the trainers fail on CPU,
            the harness is used and the failure is recorded under ``engine_error``.
        device: ``cpu`` or ``cuda[:n]`` (trainer engine only).
        mixed_precision: ``no``/``fp16``/``bf16``, the trainers' accelerate mixed precision
            (CUDA only; CPU runs fp32 with the identity branch's own bf16 autocast).
    """
    spec = SIZES[name]
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and engine != "trainer":
        raise ValueError("--engine harness runs on CPU only; use the trainer engine on CUDA")
    started = time.perf_counter()
    engine_error = None
    if engine == "trainer":
        try:
            model = build_model(name)
            bench: Any = TrainerBench(model, spec.arcface_arch, device, mixed_precision)
            figures = _figures(bench, spec)
        except Exception as error:  # noqa: BLE001 - fall back to the harness, and say so
            if on_gpu or spec.family != "sd15":  # no harness for SDXL: show the real error
                raise
            engine_error = f"{type(error).__name__}: {error}"
            engine = "harness"
    if engine == "harness":
        model = build_model(name)
        bench = StepBench(model, spec.arcface_arch)
        figures = _figures(bench, spec)
    ratios = {
        key: figures[a] / figures[b]
        for key, (a, b) in RATIOS.items()
        if a in figures and b in figures
    }
    landmarks = _bench_landmarks(model.resolution)
    breakdown = _component_breakdown(
        model, bench.encoder, landmarks, spec.repeats, bench.tiny_decoder, bench.device,
        bench.mixed_precision,
    )  # fmt: skip
    profiles: dict[str, Any] = {}
    if profile_missed:
        missed = [key for key, goal in GOALS.items() if key in ratios and ratios[key] > goal]
        for key in missed:
            numerator, denominator = RATIOS[key]
            profiles[key] = {
                numerator: _profile(bench, numerator),
                denominator: _profile(bench, denominator),
            }
    result = {
        "size": name,
        "description": spec.description,
        "engine": engine,
        "resolution": spec.resolution,
        "arcface_arch": spec.arcface_arch,
        "repeats": spec.repeats,
        "warmup": spec.warmup,
        "capture_layers": bench.capture.layer_names if bench.capture else [],
        **{key: round(value, 5) for key, value in figures.items()},
        **{key: round(value, 4) for key, value in ratios.items()},
        "min_s": {key: round(value, 5) for key, value in bench.minimum.items()},
        "breakdown_s": breakdown,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "device": str(bench.device),
        "mixed_precision": bench.mixed_precision,
        "seconds_total": round(time.perf_counter() - started, 1),
        "model": model.info,
        "profiles": profiles,
    }
    if on_gpu:
        result["peak_gpu_mb"] = {k: round(v, 1) for k, v in bench.peak_gpu_mb.items()}
        result["peak_gpu_mb_max"] = round(torch.cuda.max_memory_allocated(bench.device) / 2**20, 1)
    if engine_error:
        result["engine_error"] = engine_error
    return result


def _bench_landmarks(resolution: int) -> torch.Tensor:
    """ArcFace landmarks ``(1, 5, 2)`` of a centred face whose aligned square covers 0.53 of the
    side, as measured on the demo's astronaut crop (``core.faces.analyze_source``)."""
    from magicapture_pipeline.core.arcface import ARCFACE_TEMPLATE_112

    scale = ALIGNED_SHARE * resolution / 112
    centre = torch.tensor([resolution / 2, resolution / 2])
    return ((ARCFACE_TEMPLATE_112 - 56.0) * scale + centre)[None]


# --------------------------------------------------------------------------- per-image figures


def measure_preprocess(repeats: int = 20) -> dict[str, Any]:
    """Images per second of detection + mesh + mask + crop on a decoded 512 px photo.

    The headline is the median of whole ``analyze_source`` calls (what preprocessing runs per
    source photo); the breakdown times each of its parts alone (``core.faces.measure_stages``).
    """
    try:
        from skimage import data

        from magicapture_pipeline.core.faces import FaceAnalyzer, analyze_source, measure_stages
    except ImportError as error:
        return {"preprocess_images_per_s": None, "reason": f"not measured: {error}"}
    rgb = data.astronaut()  # 512x512, decoded once: decode is excluded
    totals: list[float] = []
    with FaceAnalyzer() as analyzer:
        for index in range(repeats + 2):
            start = time.perf_counter()
            analyze_source(rgb, analyzer, resolution=512)
            if index >= 2:
                totals.append(time.perf_counter() - start)
    parts = measure_stages(rgb, resolution=512, repeats=repeats)
    parts.pop("analyze_source", None)  # timed above, as a whole
    return {
        "preprocess_images_per_s": round(1.0 / statistics.median(totals), 2),
        "preprocess_breakdown_s": {
            "analyze_source": round(statistics.median(totals), 5),
            **{name: round(ms / 1e3, 5) for name, ms in parts.items()},
        },
    }


def measure_generation(steps: int = 20, repeats: int = 3) -> dict[str, Any]:
    """Seconds per generated image with the tiny model at the demo resolution."""
    try:
        from diffusers import StableDiffusionPipeline

        from magicapture_pipeline.core.generation import generate_images
    except ImportError as error:
        return {"generate_s_per_image": None, "reason": f"not measured: {error}"}
    model = build_model("tiny")
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=model.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    generate_images(pipe, [("{}", "a photo of a person")], images_per_prompt=1, seed=0,
                    num_inference_steps=steps, guidance_scale=7.5,
                    resolution=model.resolution, progress=False)  # fmt: skip
    images = generate_images(pipe, [("{}", "a photo of a person")], images_per_prompt=repeats,
                             seed=1, num_inference_steps=steps, guidance_scale=7.5,
                             resolution=model.resolution, progress=False)  # fmt: skip
    return {
        "generate_s_per_image": round(statistics.median(i.seconds for i in images), 4),
        "generate_setting": f"tiny model, {model.resolution} px, {steps} steps, CFG 7.5",
    }


def measure_evaluation(repeats: int = 5) -> dict[str, Any]:
    """Seconds per image of the identity metric (CSIM) with the offline dlib embedder."""
    try:
        from PIL import Image
        from skimage import data

        from magicapture_pipeline.core.metrics import csim, load_identity_embedder
    except ImportError as error:
        return {"evaluate_s_per_image": None, "reason": f"not measured: {error}"}
    embedder, reason = load_identity_embedder("dlib", None)
    if embedder is None:
        return {"evaluate_s_per_image": None, "reason": f"not measured: {reason}"}
    image = Image.fromarray(data.astronaut())
    generated = {f"g{i}": image for i in range(repeats)}
    csim(embedder, {"warm": image}, [image])
    start = time.perf_counter()
    csim(embedder, generated, [image])
    per_image = (time.perf_counter() - start) / (repeats + 1)  # + the one source embedding
    return {
        "evaluate_s_per_image": round(per_image, 4),
        "evaluate_setting": "CSIM (dlib, offline) on 512 px images; CLIP style and aesthetic "
        "scores need weights that are not obtainable offline",
    }


# --------------------------------------------------------------------------- report


def _environment(device: str = "cpu", mixed_precision: str = "no") -> dict[str, Any]:
    import diffusers

    on_gpu = torch.device(device).type == "cuda"
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(torch.device(device)) if on_gpu else "cpu",
        "torch_device": device,
        "mixed_precision": mixed_precision if on_gpu else "no",
        "cuda": torch.version.cuda if on_gpu else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _run_size_in_child(
    name: str, profile: bool, engine: str, device: str = "cpu", mixed_precision: str = "no"
) -> dict[str, Any]:
    """Measure one size in a fresh interpreter so its peak RSS is its own."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [
        sys.executable,
        "-m",
        "magicapture_pipeline.speed_bench",
        "--child",
        name,
        "--child-out",
        str(out),
        "--engine",
        engine,
        "--device",
        device,
        "--mixed-precision",
        mixed_precision,
    ]
    command += [] if profile else ["--no-profile"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"size": name, "error": f"not measured: child failed: {' | '.join(tail)}"}
    result = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    return result


def _markdown(report: dict[str, Any]) -> str:
    sizes = report["sizes"]
    names = list(sizes)
    env = report["environment"]
    precision = env.get("mixed_precision", "no")
    where = (
        f"{env['device']} (CUDA {env.get('cuda')}, mixed precision {precision})"
        if env.get("cuda")
        else f"{env['device']} · {env['torch_threads']} thread(s)"
    )
    lines = [
        "# MagiCapture step benchmark",
        "",
        f"{env['date_utc']} · torch {env['torch']} · {where}."
        " Median seconds per optimiser step (batch 1); ratios of medians of the same run.",
        "",
        "| figure | " + " | ".join(names) + " | goal |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    keys = [*STAGE_ONE_FIGURES, *STAGE_TWO_FIGURES, *RATIOS, "peak_rss_mb"]
    for key in keys:
        cells = []
        for name in names:
            value = sizes[name].get(key)
            cells.append("-" if value is None else f"{value:g}")
        goal = f"<= {GOALS[key]}" if key in GOALS else ""
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {goal} |")
    if any("peak_gpu_mb" in sizes[n] for n in names):
        lines += ["", "Peak allocated GPU memory of one step (MiB):", ""]
        lines += ["| step | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key in (*STAGE_ONE_FIGURES, *STAGE_TWO_FIGURES):
            cells = [f"{sizes[n].get('peak_gpu_mb', {}).get(key, '-')}" for n in names]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Parts of a step, each alone (median s):", ""]
    lines += ["| part | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    parts = ("unet_fwd_bwd_s", "vae_decode_fwd_bwd_s", "tiny_decoder_fwd_bwd_s",
             "arcface_fwd_bwd_s", "vae_encode_s")  # fmt: skip
    for key in parts:
        cells = [f"{sizes[n].get('breakdown_s', {}).get(key, '-')}" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "| per-image figure (CPU) | value |", "|---|---|"]
    for key in ("preprocess_images_per_s", "generate_s_per_image", "evaluate_s_per_image"):
        value = report.get(key)
        shown = report.get("not_measured", {}).get(key, "-") if value is None else f"{value:g}"
        lines.append(f"| {key} | {shown} |")
    lines += ["", "## Sizes", ""]
    for name in names:
        size = sizes[name]
        if "error" in size:
            lines.append(f"- **{name}**: {size['error']}")
            continue
        engine = size.get("engine", "?")
        if size.get("engine_error"):
            engine += f" (trainers failed: {size['engine_error']})"
        lines.append(
            f"- **{name}**: {size['description']}; parameters (M) {size['model']['parameters_m']};"
            f" ArcFace {size['arcface_arch']}; AR capture {size['capture_layers']}; steps timed "
            f"with: {engine}; {size.get('repeats')} timed rounds after {size.get('warmup')} "
            "warm-up."
        )
    lines += [
        "",
        "Notes: identity figures are the cost of a step in which Eq. 7 runs (t < T' forced); in"
        " training it runs only on composed micro-batches with t < T'. `id_single_pass` and"
        " `id_two_pass` use the speed options: VAE decode of the face's latent window only"
        " (`identity.decode_region: face_window`) and decode + ArcFace under bfloat16 autocast"
        " (`identity.autocast_dtype: bf16`); `window_fp32` is the window without autocast, `full`"
        " the whole-image fp32 decode (paper and authors' code; the default), `tiny_decoder`"
        " the speed options with TAESD decoding the window (`identity.decoder: tiny_autoencoder`;"
        " random weights of TAESD's architecture, so its cost, not its quality). Ratios under"
        " ~1.2 move by several percent between runs on a shared 2-core machine.",
    ]
    for name in names:
        for ratio, tables in sizes[name].get("profiles", {}).items():
            lines += ["", f"## Profile: {name}, {ratio} missed", ""]
            for figure, table in tables.items():
                clock = table.get("clock", "self CPU time")
                lines += [
                    f"`{figure}`: profiled step {table['wall_s']} s ({clock} total "
                    f"{table['self_cpu_total_s']} s); top ops by {clock}:",
                    "",
                    "| op | s | share |",
                    "|---|---|---|",
                ]
                lines += [f"| {r['op']} | {r['self_cpu_s']} | {r['share']} |" for r in table["top"]]
                lines.append("")
    return "\n".join(lines) + "\n"


def run(
    sizes: list[str],
    out_dir: Path,
    profile: bool = True,
    engine: str = "trainer",
    device: str = "cpu",
    mixed_precision: str = "no",
) -> dict[str, Any]:
    """Measure every size (each in its own process) and the per-image figures; write reports.

    The per-image figures (preprocess, generation, evaluation) are CPU figures on any device.
    """
    report: dict[str, Any] = {
        "environment": _environment(device, mixed_precision),
        "goals": GOALS,
        "sizes": {},
    }
    for name in sizes:
        print(f"[bench] size {name} ...", flush=True)  # noqa: T201 - CLI progress
        report["sizes"][name] = _run_size_in_child(name, profile, engine, device, mixed_precision)
    not_measured: dict[str, str] = {}
    for measure in (measure_preprocess, measure_generation, measure_evaluation):
        print(f"[bench] {measure.__name__} ...", flush=True)  # noqa: T201
        try:
            result = measure()
        except Exception as error:  # noqa: BLE001 - a figure that fails is reported, not fatal
            key = {"measure_preprocess": "preprocess_images_per_s",
                   "measure_generation": "generate_s_per_image",
                   "measure_evaluation": "evaluate_s_per_image"}[measure.__name__]  # fmt: skip
            result = {key: None, "reason": f"not measured: {type(error).__name__}: {error}"}
        reason = result.pop("reason", None)
        for key, value in result.items():
            report[key] = value
            if value is None and reason:
                not_measured[key] = reason
    headline = next((n for n in reversed(sizes) if "error" not in report["sizes"][n]), None)
    if headline:
        report["headline_size"] = headline
        for key in (*STAGE_ONE_FIGURES, *STAGE_TWO_FIGURES, *RATIOS):
            if key in report["sizes"][headline]:
                report[key] = report["sizes"][headline][key]
    report["peak_rss_mb"] = {n: s.get("peak_rss_mb") for n, s in report["sizes"].items()}
    if torch.device(device).type == "cuda":
        report["peak_gpu_mb"] = {n: s.get("peak_gpu_mb_max") for n, s in report["sizes"].items()}
    if report.get("preprocess_images_per_s") is not None:
        report["preprocess_goal_met"] = report["preprocess_images_per_s"] >= PREPROCESS_GOAL
    report["goals_met"] = {
        name: {k: s[k] <= g for k, g in GOALS.items() if k in s}
        for name, s in report["sizes"].items()
    }
    report["not_measured"] = not_measured
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench.md").write_text(_markdown(report))
    return report


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m magicapture_pipeline.speed_bench [--sizes a,b] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated sizes of {sorted(SIZES)}; default: every size on CUDA, all but "
        "the GPU-only ones on CPU",
    )
    parser.add_argument("--out", default=str(REPORT_DIR), help="folder of bench.json / bench.md")
    parser.add_argument("--no-profile", action="store_true", help="skip profiles of missed goals")
    parser.add_argument(
        "--engine",
        choices=("trainer", "harness"),
        default="trainer",
        help="time core.training's trainers (default) or the steps assembled in this module",
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:n]")
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default="no",
        help="the trainers' mixed precision on CUDA (the paper's recipe: fp16); ignored on CPU",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = measure_size(
            args.child,
            profile_missed=not args.no_profile,
            engine=args.engine,
            device=args.device,
            mixed_precision=args.mixed_precision,
        )
        Path(args.child_out).write_text(json.dumps(result))
        return
    on_gpu = torch.device(args.device).type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: this torch build ({torch.__version__}) sees no CUDA device;"
            " on a GPU machine install a CUDA build of the same torch (constraints.txt pins the"
            " CPU build): pip install --force-reinstall torch==" + torch.__version__.split("+")[0]
        )
    if on_gpu and args.engine != "trainer":
        parser.error("--engine harness runs on CPU only")
    chosen = args.sizes or ",".join(default_sizes(args.device))
    sizes = [s for s in chosen.split(",") if s]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    run(
        sizes,
        Path(args.out),
        profile=not args.no_profile,
        engine=args.engine,
        device=args.device,
        mixed_precision=args.mixed_precision,
    )
    print((Path(args.out) / "bench.md").read_text())  # noqa: T201


if __name__ == "__main__":
    main()
