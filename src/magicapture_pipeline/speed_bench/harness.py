"""The steps assembled from the core functions (``--engine harness``, CPU, SD 1.x only)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from magicapture_pipeline.speed_bench.sizes import (
    ALIGNED_SHARE,
    AR_RESOLUTION,
    AR_WEIGHT,
    COMPOSED_PROMPT,
    ID_THRESHOLD,
    ID_WEIGHT,
    PERSON,
    SOURCE_PROMPT,
    STYLE,
    BenchModel,
)

# --------------------------------------------------------------------------- one training step


def _face_mask(resolution: int) -> torch.Tensor:
    """An ellipse face mask ``(1, 1, R, R)`` in the middle of the image."""
    axis = torch.linspace(-1.0, 1.0, resolution)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return ((xx / 0.45) ** 2 + (yy / 0.6) ** 2 <= 1.0).float()[None, None]


class StepBench:
    """One size's training steps, built from the core functions, ready to be timed (CPU only)."""

    def __init__(self, model: BenchModel, arcface_arch: str) -> None:
        from magicapture_pipeline.core.identity.arcface import FaceIdentityEncoder, build_iresnet
        from magicapture_pipeline.core.models.builders import build_tiny_autoencoder

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

        from magicapture_pipeline.core.models.attention import CrossAttentionCapture

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
        from magicapture_pipeline.config.loss_terms import IdentityConfig
        from magicapture_pipeline.core.identity.arcface import face_latent_window
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


def _bench_landmarks(resolution: int) -> torch.Tensor:
    """ArcFace landmarks ``(1, 5, 2)`` of a centred face whose aligned square covers 0.53 of the
    side, as measured on the demo's astronaut crop (``core.faces.analyze_source``)."""
    from magicapture_pipeline.core.identity.arcface import ARCFACE_TEMPLATE_112

    scale = ALIGNED_SHARE * resolution / 112
    centre = torch.tensor([resolution / 2, resolution / 2])
    return ((ARCFACE_TEMPLATE_112 - 56.0) * scale + centre)[None]
