"""Eq. 7 wiring: the identity loss of stage two (ArcFace on the one-step x0 estimate).

The loss itself is :func:`core.losses.identity_loss`; the face encoder and alignment live in
:mod:`core.arcface`. This module decides whether Eq. 7 runs (:func:`identity_status`), builds the
face encoder and the source embedding, and computes the term for a composed micro-batch
(``single_pass`` from the same UNet forward when ``t < T'``; ``two_pass`` with a second forward).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.models.loading import (
    build_tiny_autoencoder,
    check_decoder_matches,
    load_tiny_autoencoder,
)
from magicapture_pipeline.core.training.examples import SOURCE, TrainingExample
from magicapture_pipeline.core.training.loop import _pick

logger = logging.getLogger(__name__)


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


class IdentityTerm:
    """Mixin of :class:`StageTwoTrainer`: the identity branch (Eq. 7)."""

    def _setup_identity(self) -> None:
        from magicapture_pipeline.core.identity import arcface

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
        if wanted == "fp32":  # the authors' decode runs outside their fp16 autocast
            return torch.autocast(device_type=kind, enabled=False)
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
        from magicapture_pipeline.core.identity.arcface import align_faces, face_latent_window

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
        with self._vae_precision():  # SDXL's VAE: never under fp16 autocast
            return self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample

    def _identity_ready(self, example: TrainingExample) -> bool:
        return self.face_encoder is not None and example.landmarks5 is not None

    def _composed_identity(
        self,
        noisy: Tensor,
        pred: Tensor,
        timesteps: Tensor,
        *,
        latents: Tensor,
        cond: Any,
        example: TrainingExample,
    ) -> Tensor | None:
        """Eq. 7 for a micro-batch of a task in ``identity.tasks`` (composed; the authors' code
        also source).

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
        pred2 = self._predict(noisy2, timesteps2, cond)
        return self._identity_term(noisy2, pred2, timesteps2, example)
