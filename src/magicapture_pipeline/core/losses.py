"""The MagiCapture training losses, one function per paper equation (arXiv 2309.06895 v2).

Equation numbers are the paper's:

* Eq. 4 - masked reconstruction of a *source* image: the denoising error counts only inside the
  face mask ``M_s`` (stage one and stage two, source prompt "a photo of a [V1] person").
* Eq. 5 - masked reconstruction of a *reference* (style) image: the error counts only outside the
  face mask, i.e. with ``1 - M_r`` (reference prompt "a painting of a person in the [V2] style").
* Eq. 6 - composed-prompt learning: the composed prompt "a photo of a [V1] person in the [V2]
  style" is trained against the pseudo-label (the reference image), again with ``1 - M``.

Eq. 4, 5 and 6 share one formula, ``E ||M ⊙ (ε - ε_θ(z_t, t, c))||²``, differing only in which
mask and prompt the caller passes, so they share one home: :func:`masked_reconstruction_loss`.

* Eq. 7 - identity loss: ``1 - cos(R(x̂_0), R(I_s))`` between ArcFace embeddings of the
  one-step (Tweedie) estimate ``x̂_0`` (:func:`one_step_x0_estimate`) and the source face, applied
  only for ``t < T'`` (:func:`identity_loss_active`).
* Eq. 8 - attention refocusing: ``E_k ||A_k - A_k ⊙ M_k||²`` with min-max scaled cross-attention
  maps ``A_k`` of the placeholder tokens (min and max held constant, as the authors' code does)
  and their region masks ``M_k``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-8


def soften_mask(mask: Tensor, floor: float = 0.01, temperature: float = 1.0) -> Tensor:
    """Soften a binary mask the way the official code does before Eq. 4-6.

    The official training computes ``(mask + floor) ** temperature`` and divides by the maximum,
    so the region outside the mask keeps a small weight (about ``floor``) instead of exactly zero.
    ``floor=0`` and ``temperature=1`` return the mask unchanged (up to the max-normalisation).

    Args:
        mask: mask in ``[0, 1]``, any shape ``(B, ...)``; normalised per sample.
        floor: value added before the power (official: 0.01).
        temperature: exponent (official ``mask_temperature``, default 1.0).

    Returns:
        The softened mask, same shape, maximum 1 per sample.
    """
    soft = (mask + floor).pow(temperature)
    peak = soft.flatten(1).amax(dim=1).clamp_min(_EPS)
    return soft / peak.view(-1, *([1] * (soft.ndim - 1)))


def masked_reconstruction_loss(noise_pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Masked denoising loss of Eq. 4 (source, face mask), Eq. 5 (reference, ``1 - M``) and Eq. 6
    (composed prompt against the reference pseudo-label, ``1 - M``).

    Computes ``||M ⊙ (target - noise_pred)||²`` per sample, normalised by the mask area times the
    number of channels, so a binary mask gives the plain MSE over the masked pixels (as the
    official code's ``all_area / mask_area`` rescaling intends), then averages over the batch.
    As in the paper (and the official code, which multiplies prediction and target by the mask),
    the mask multiplies the *difference*, so a soft mask weighs a pixel by ``M²``; pixels where
    ``M == 0`` receive exactly zero gradient. A sample whose mask is empty contributes 0.

    Args:
        noise_pred: UNet output ``(B, C, h, w)``.
        target: the regression target (the noise for ``epsilon``, the velocity for ``v``),
            same shape as ``noise_pred``.
        mask: ``(B, 1, h, w)`` (or ``(B, C, h, w)``) in ``[0, 1]`` at latent resolution; a single
            channel is broadcast over the latent channels. Pass ``1 - face_mask`` for Eq. 5 and 6.

    Returns:
        Scalar loss (mean over the batch of the per-sample normalised masked MSE).
    """
    if noise_pred.shape != target.shape:
        raise ValueError(f"noise_pred {tuple(noise_pred.shape)} != target {tuple(target.shape)}")
    if mask.ndim != noise_pred.ndim or mask.shape[-2:] != noise_pred.shape[-2:]:
        raise ValueError(
            f"mask {tuple(mask.shape)} must be (B, 1, h, w) at the latent size "
            f"{tuple(noise_pred.shape[-2:])}"
        )
    mask = mask.to(noise_pred.dtype)
    diff = (noise_pred.float() - target.float()) * mask.float()
    squared = diff.pow(2).flatten(1).sum(dim=1)
    channels = noise_pred.shape[1] if mask.shape[1] == 1 else 1
    area = mask.float().flatten(1).sum(dim=1) * channels
    per_sample = squared / area.clamp_min(_EPS)
    return per_sample.mean()


def one_step_x0_estimate(
    noisy_latents: Tensor,
    model_output: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: str = "epsilon",
) -> Tensor:
    """One-step (Tweedie) estimate of the clean latent ``x̂_0`` used by the identity loss, Eq. 7.

    With ``ᾱ_t`` the cumulative product of the noise schedule:

    * ``epsilon``: ``x̂_0 = (z_t - sqrt(1 - ᾱ_t) ε_θ) / sqrt(ᾱ_t)``;
    * ``v_prediction``: ``x̂_0 = sqrt(ᾱ_t) z_t - sqrt(1 - ᾱ_t) v_θ``;
    * ``sample``: the model predicts ``x̂_0`` itself.

    Args:
        noisy_latents: ``z_t``, ``(B, C, h, w)``.
        model_output: the UNet output for ``z_t``, same shape.
        timesteps: ``(B,)`` integer timesteps.
        alphas_cumprod: the scheduler's ``alphas_cumprod`` ``(T,)``.
        prediction_type: the scheduler's ``prediction_type``.

    Returns:
        ``x̂_0`` with the shape of ``noisy_latents``; differentiable w.r.t. ``model_output``.
    """
    alpha_bar = alphas_cumprod.to(device=noisy_latents.device, dtype=torch.float32)[
        timesteps.to(noisy_latents.device).long()
    ]
    alpha_bar = alpha_bar.view(-1, *([1] * (noisy_latents.ndim - 1)))
    sqrt_ab = alpha_bar.sqrt().to(noisy_latents.dtype)
    sqrt_one_minus = (1.0 - alpha_bar).sqrt().to(noisy_latents.dtype)
    if prediction_type == "epsilon":
        return (noisy_latents - sqrt_one_minus * model_output) / sqrt_ab
    if prediction_type == "v_prediction":
        return sqrt_ab * noisy_latents - sqrt_one_minus * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def identity_loss(generated_embedding: Tensor, source_embedding: Tensor) -> Tensor:
    """Identity loss of Eq. 7: ``1 - cos(R(x̂_0), R(I_s))``, averaged over the batch.

    Both embeddings are L2-normalised here, so raw IResNet features may be passed. The official
    code uses ``CosineEmbeddingLoss`` with target 1, which is the same quantity.

    Args:
        generated_embedding: ``(B, D)`` embeddings of the decoded one-step estimates.
        source_embedding: ``(B, D)`` or ``(D,)`` embedding(s) of the source identity (the paper
            compares with the source images; the project uses their mean embedding).

    Returns:
        Scalar in ``[0, 2]``; 0 when the directions agree.
    """
    generated = F.normalize(generated_embedding.float(), dim=-1)
    source = F.normalize(source_embedding.float(), dim=-1)
    if source.ndim == 1:
        source = source.unsqueeze(0)
    cosine = (generated * source.to(generated.device)).sum(dim=-1)
    return (1.0 - cosine).mean()


def identity_loss_active(
    timesteps: Tensor, num_train_timesteps: int, threshold_fraction: float = 0.8
) -> Tensor:
    """Which samples get the identity loss of Eq. 7: those with ``t < T'``.

    The paper applies the identity loss only at timesteps below ``T'``, where the one-step
    estimate is still a recognisable face; ``T' = threshold_fraction * T`` (default 0.8 T).

    Args:
        timesteps: ``(B,)`` sampled timesteps.
        num_train_timesteps: ``T`` (1000 for SD).
        threshold_fraction: ``T' / T``.

    Returns:
        Boolean tensor ``(B,)``.
    """
    return timesteps < threshold_fraction * num_train_timesteps


ScaleOrder = Literal["average_then_scale", "scale_then_average"]


def min_max_scale(maps: Tensor) -> Tensor:
    """Scale each map of ``(..., h, w)`` to ``[0, 1]`` by its own minimum and maximum, both held
    constant (no gradient flows through them).

    The authors' code subtracts ``map.min().item()`` and divides by ``map.max().item()``
    (``lora_diffusion_/magicapture_train.py``, ``loss_step``), i.e. with constants. That matters
    for Eq. 8: with a differentiable maximum, a peak outside the token's region is pushed *up*
    (its own scaled value is always 1, so its only gradient comes through the maximum, and a
    larger maximum shrinks every other outside pixel), so descent raises the very peak it should
    lower. With the range held constant, each pixel's gradient is ``2 A (1 - M) / (max - min)``,
    positive outside the region. A constant map becomes all zeros.

    Args:
        maps: tensor whose last two dimensions are spatial.

    Returns:
        The scaled maps, same shape; differentiable w.r.t. ``maps`` with min and max constant.
    """
    flat = maps.flatten(-2)
    low = flat.amin(dim=-1, keepdim=True).detach()
    high = flat.amax(dim=-1, keepdim=True).detach()
    scaled = (flat - low) / (high - low).clamp_min(_EPS)
    return scaled.view_as(maps)


def attention_refocusing_loss(
    attention_maps: Tensor,
    region_masks: Tensor,
    order: ScaleOrder = "average_then_scale",
) -> Tensor:
    """Attention Refocusing loss of Eq. 8: ``E_k ||A_k - A_k ⊙ M_k||²``.

    ``A_k`` is the cross-attention map of placeholder token ``k``, min-max scaled to ``[0, 1]``
    (:func:`min_max_scale`, min and max held constant); ``M_k`` is its region (the face mask for
    [V1], the non-face mask for [V2]). The squared attention is penalised only where the mask is
    0, so the loss is zero when the token attends only inside its region. When the masks are
    larger than the maps (the authors' code compares at latent resolution, e.g. 64x64 for 16x16
    maps) the maps are first upsampled bilinearly, then scaled.

    Two orders of scaling and averaging over the ``M`` head/layer maps of a token:

    * ``average_then_scale`` (default): average the maps, then scale the mean, which is the
      paper's wording (Eq. 8 reads one map ``A_k`` per token) and lets the capture keep only
      the head-mean of each layer (8x less memory on SD 1.5);
    * ``scale_then_average``: scale each head/layer map, then average (the authors' code:
      ``loss_step`` scales each of the 40 maps of SD 1.5 at 16x16, then ``maps.mean(dim=1)``).

    Args:
        attention_maps: ``(B, K, h, w)`` attention probabilities of ``K`` tokens (already
            averaged), or ``(B, K, M, h, w)`` with the ``M`` head/layer maps of each token.
        region_masks: ``(B, K, H, W)`` in ``[0, 1]``, one mask per token (``(B, 1, H, W)`` is
            broadcast to every token).
        order: ``average_then_scale`` or ``scale_then_average`` (needs the 5-d input to differ).

    Returns:
        Scalar: mean over pixels, tokens and batch of ``(A_k (1 - M_k))²``.
    """
    if order not in ("average_then_scale", "scale_then_average"):
        raise ValueError(f"unknown order {order!r}: average_then_scale or scale_then_average")
    if attention_maps.ndim not in (4, 5) or region_masks.ndim != 4:
        raise ValueError(
            "attention_maps must be (B, K, h, w) or (B, K, M, h, w) and region_masks (B, K, H, W)"
        )
    maps = attention_maps.float()
    if maps.ndim == 4:
        maps = maps.unsqueeze(2)
    batch, tokens, count, height, width = maps.shape
    if order == "average_then_scale":
        maps, count = maps.mean(dim=2, keepdim=True), 1
    size = tuple(region_masks.shape[-2:])
    if (height, width) != size:
        flat = maps.reshape(batch * tokens, count, height, width)
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
        maps = flat.view(batch, tokens, count, *size)
    scaled = min_max_scale(maps).mean(dim=2)
    outside = 1.0 - region_masks.to(device=scaled.device, dtype=scaled.dtype)
    return (scaled * outside).pow(2).mean()
