"""Eq. 7 as a loss term of stage two: ArcFace on the one-step x0 estimate.

The loss itself is :func:`core.losses.identity_loss`; the face encoder and alignment live in
:mod:`core.identity.arcface`. :func:`identity_status` decides whether Eq. 7 runs;
:class:`IdentityTerm` is built from the ``identity`` section of a ``StageTwoConfig`` (face encoder,
optional TAESD decoder, the source embedding) and computes the term from a UNet prediction.
Which prediction (``single_pass``: the training forward when ``t < T'``; ``two_pass``: a second
forward at a fresh ``t < T'``) is the micro-step's choice (:mod:`.stage_two`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.models.builders import build_tiny_autoencoder
from magicapture_pipeline.core.models.loading import (
    check_decoder_matches,
    load_tiny_autoencoder,
    upsampling_factor,
)
from magicapture_pipeline.core.training.examples import TrainingExample
from magicapture_pipeline.core.training.loop import vae_precision

if TYPE_CHECKING:
    from magicapture_pipeline.config.loss_terms import IdentityConfig

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles).

    Without either, torch emulates bf16 and autocast is a slowdown, not a speed option: one r18
    ArcFace forward of two faces took 5.5 s CPU under bf16 autocast against 0.2 s in fp32 on the
    2-core build machine (2026-12-06). The probes are torch's own (``torch.cpu``, private in
    2.13); a torch without them counts as no native bf16.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def identity_status(config: IdentityConfig) -> dict[str, Any]:
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
    """Eq. 7 of a stage-two micro-batch (arXiv 2309.06895 v2, Method: Composed Prompt Learning).

    Args:
        config: the ``identity`` section (an ``IdentityConfig``), read on every call.
        encoder: the ArcFace ``FaceIdentityEncoder`` (frozen).
        source_embedding: the normalised mean ArcFace embedding of the source faces.
        vae: the base model's VAE (decodes x0 unless ``decoder`` is set).
        decoder: TAESD when ``identity.decoder`` is ``tiny_autoencoder``, else ``None``.
        family: the base model's family (SDXL's VAE never runs under fp16 autocast).
        noise_scheduler: the training noise scheduler (``alphas_cumprod``, prediction type, T).
        device: the trainer's device.
    """

    def __init__(
        self,
        config: IdentityConfig,
        *,
        encoder: torch.nn.Module,
        source_embedding: Tensor,
        vae: Any,
        decoder: Any,
        family: str,
        noise_scheduler: Any,
        device: torch.device,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.source_embedding = source_embedding
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.decoder = decoder
        self.family = family
        self.noise_scheduler = noise_scheduler
        self.device = device
        self.latent_factor = upsampling_factor(vae)  # diffusers' vae_scale_factor
        self._warned: set[str] = set()

    @classmethod
    def from_config(
        cls,
        config: IdentityConfig,
        *,
        vae: Any,
        family: str,
        noise_scheduler: Any,
        sources: Sequence[TrainingExample],
        device: torch.device,
    ) -> IdentityTerm | None:
        """ArcFace (the checkpoint, or a random IResNet with ``random_init``), TAESD when
        configured, and the source embedding from the ``sources`` that have landmarks; ``None``
        (with a warning) when none has."""
        from magicapture_pipeline.core.identity import arcface

        if config.checkpoint is not None:
            backbone = arcface.load_arcface(config.checkpoint, config.arch)
        else:
            # random stand-in: zero-init residuals, or an r100 embeds every image as NaN
            backbone = arcface.freeze(arcface.build_iresnet(config.arch, zero_init_residual=True))
        encoder = arcface.FaceIdentityEncoder(backbone).to(device)
        decoder = None
        if config.decoder == "tiny_autoencoder":
            if config.tiny_autoencoder is None:
                decoder = build_tiny_autoencoder()
            else:
                decoder = load_tiny_autoencoder(config.tiny_autoencoder)
            check_decoder_matches(decoder, vae)
            decoder = decoder.to(device)
        marked = [example for example in sources if example.landmarks5 is not None]
        if not marked:
            logger.warning("IDENTITY LOSS (Eq. 7) IS OFF: no source image has landmarks5")
            return None
        with torch.no_grad():
            images = torch.stack([e.image for e in marked]).to(device)
            marks = torch.stack([e.landmarks5 for e in marked]).float().to(device)
            source_embedding = F.normalize(encoder(images, marks).mean(0), dim=-1)
        return cls(
            config,
            encoder=encoder,
            source_embedding=source_embedding,
            vae=vae,
            decoder=decoder,
            family=family,
            noise_scheduler=noise_scheduler,
            device=device,
        )

    # when the term runs -----------------------------------------------------------------
    @property
    def weight(self) -> float:
        """Eq. 7's weight in the stage-two total (``identity.weight``)."""
        return self.config.weight

    @property
    def two_pass(self) -> bool:
        """``two_pass`` (official): Eq. 7 from a second UNet forward at a fresh ``t < T'`` with
        the step's own noise, every micro-batch of a task in ``identity.tasks``."""
        return self.config.mode == "two_pass"

    @property
    def timestep_limit(self) -> int:
        """``T'``: the second forward's timestep is drawn below it (at least 1)."""
        total = self.noise_scheduler.config.num_train_timesteps
        return max(int(self.config.threshold_fraction * total), 1)

    def active(self, timesteps: Tensor) -> bool:
        """``single_pass``: whether the training forward's ``t`` is below ``T'``."""
        total = self.noise_scheduler.config.num_train_timesteps
        return bool(losses.identity_loss_active(timesteps, total, self.config.threshold_fraction))

    # the term ---------------------------------------------------------------------------
    def __call__(
        self, noisy: Tensor, pred: Tensor, timesteps: Tensor, landmarks5: Tensor
    ) -> tuple[Tensor, dict[str, Any]]:
        """Eq. 7 on the one-step x0 estimate of ``pred``: decode (the whole latent, or only the
        face's latent window, ``identity.decode_region``; by the VAE or TAESD,
        ``identity.decoder``), align by the 5 ``landmarks5`` (fp32) and embed with ArcFace; decode
        and ArcFace under ``identity.autocast_dtype``.

        Returns:
            The unweighted loss and its logs ``{"loss_id": value, "id_active": 1.0}``.
        """
        from magicapture_pipeline.core.identity.arcface import align_faces, face_latent_window

        cfg = self.config
        x0 = losses.one_step_x0_estimate(
            noisy,
            pred,
            timesteps,
            self.noise_scheduler.alphas_cumprod,
            self.noise_scheduler.config.prediction_type,
        )
        marks = landmarks5.float().unsqueeze(0).to(self.device)
        if cfg.decode_region == "face_window":
            factor = self.latent_factor
            top, bottom, left, right = face_latent_window(
                marks, tuple(x0.shape[-2:]), latent_factor=factor, margin=cfg.window_margin
            )
            x0 = x0[..., top:bottom, left:right]
            # landmarks into the decoded window's pixel frame
            marks = marks - marks.new_tensor([left * factor, top * factor])
        with self._autocast():
            image = self._decode(x0)
        # the similarity warp stays fp32 (bf16 grid coordinates would be off by ~1 px)
        with torch.autocast(device_type=self.device.type, enabled=False):
            aligned = align_faces(image.float(), marks)
        with self._autocast():
            features = self.encoder.backbone(aligned)
        embedding = F.normalize(features.float(), dim=-1)
        loss = losses.identity_loss(embedding, self.source_embedding)
        return loss, {"loss_id": loss.item(), "id_active": 1.0}

    def _decode(self, latents: Tensor) -> Tensor:
        """Pixels (about [-1, 1]) of the scaled ``latents`` the UNet sees: the base VAE, or TAESD
        when configured (its ``scaling_factor`` is 1: it reads those latents as they are)."""
        if self.decoder is not None:
            decoder = self.decoder
            scale = float(decoder.config.scaling_factor)
            return decoder.decode(latents.to(decoder.dtype) / scale).sample
        with vae_precision(self.family, self.device):  # SDXL's VAE: never under fp16 autocast
            return self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample

    def _autocast(self) -> Any:
        """The autocast context of the identity branch (``identity.autocast_dtype``)."""
        wanted = self.config.autocast_dtype
        kind = self.device.type
        if wanted == "none":
            return contextlib.nullcontext()
        if wanted == "fp32":  # the authors' decode runs outside their fp16 autocast
            return torch.autocast(device_type=kind, enabled=False)
        reason = _autocast_unavailable(wanted, kind)
        if reason is not None:
            self._warn_once(reason)
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if wanted == "bf16" else torch.float16
        return torch.autocast(device_type=kind, dtype=dtype)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)


def _autocast_unavailable(wanted: str, kind: str) -> str | None:
    """Why the identity branch cannot autocast to ``wanted`` (bf16/fp16) on ``kind``, or None."""
    if wanted == "fp16" and kind != "cuda":
        return "identity.autocast_dtype fp16 needs CUDA; identity branch left as is"
    if kind not in ("cpu", "cuda"):
        return f"identity.autocast_dtype {wanted} not supported on {kind}; off"
    if wanted == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16; identity.autocast_dtype bf16 left off"
    if wanted == "bf16" and kind == "cpu" and not cpu_has_native_bf16():
        return (
            "this CPU has no native bfloat16 (AVX512-BF16/AMX): identity.autocast_dtype bf16 "
            "left off (emulated bf16 is ~27x slower than fp32 here)"
        )
    return None
