"""Cross-attention capture for the Attention Refocusing loss (Eq. 8), at one resolution only.

The loss reads the cross-attention probabilities of the placeholder tokens. The official code
reads the 16x16 ``attn2`` layers of SD 1.5 at 512 px (``down_blocks.2`` and ``up_blocks.1``).
Hand-computing ``softmax(QK^T / sqrt(d))`` everywhere was measured at 2.1x the step time, so
:class:`CrossAttentionCapture` installs its processor only on those ``attn2`` modules and leaves
every other attention on PyTorch's fused ``scaled_dot_product_attention`` (``AttnProcessor2_0``);
measured cost 0-4 % per step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block_resolutions(unet: nn.Module, latent_size: int) -> dict[str, int]:
    """Spatial size (latent pixels) at which each down/mid/up block of a diffusers UNet runs."""
    sizes: dict[str, int] = {}
    size = latent_size
    for index, block in enumerate(unet.down_blocks):
        sizes[f"down_blocks.{index}"] = size
        if getattr(block, "downsamplers", None):
            size = math.ceil(size / 2)
    if getattr(unet, "mid_block", None) is not None:
        sizes["mid_block"] = size
    for index, block in enumerate(unet.up_blocks):
        sizes[f"up_blocks.{index}"] = size
        if getattr(block, "upsamplers", None):
            size *= 2
    return sizes


def cross_attention_resolutions(
    unet: nn.Module, latent_size: int | None = None, include_mid: bool = False
) -> dict[str, int]:
    """Map every ``attn2`` module name of ``unet`` to the spatial size it runs at.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (peft adapters may be attached).
        latent_size: latent height/width; default ``unet.config.sample_size``.
        include_mid: also list the mid block's ``attn2`` (the official code reads only the down
            and up blocks).

    Returns:
        ``{module name: resolution}`` in module order.
    """
    size = int(latent_size or unet.config.sample_size)
    blocks = _block_resolutions(unet, size)
    found: dict[str, int] = {}
    for name, _module in unet.named_modules():
        if not name.endswith("attn2"):
            continue
        block = name.split(".attentions.")[0]
        if block == "mid_block" and not include_mid:
            continue
        if block in blocks:
            found[name] = blocks[block]
    return found


def cross_attention_layers(
    unet: nn.Module,
    resolution: int | None = None,
    latent_size: int | None = None,
    include_mid: bool = False,
) -> list[str]:
    """Names of the ``attn2`` modules whose spatial size equals ``resolution``.

    For SD 1.5 (``sample_size`` 64) and ``resolution=16`` these are the ``attn2`` of
    ``down_blocks.2`` and ``up_blocks.1``, the layers the official code reads. With
    ``resolution=None`` the coarsest cross-attention resolution that is at least 4 latent pixels is
    chosen (16 for SD 1.5, whose 8x8 cross-attention sits in the mid block, excluded by default;
    for the tiny (32, 64) UNet the only cross-attention resolution, the full latent size).

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        resolution: wanted spatial size in latent pixels, or ``None`` for the default above.
        latent_size: latent height/width; default ``unet.config.sample_size``.
        include_mid: also consider the mid block.

    Returns:
        Module names (as in ``unet.named_modules()``), in module order.

    Raises:
        ValueError: no ``attn2`` runs at that resolution.
    """
    sizes = cross_attention_resolutions(unet, latent_size, include_mid)
    if resolution is None:
        candidates = sorted({size for size in sizes.values() if size >= 4})
        if not candidates:
            raise ValueError("the UNet has no cross-attention at 4 latent pixels or more")
        resolution = candidates[0]
    names = [name for name, size in sizes.items() if size == resolution]
    if not names:
        available = sorted(set(sizes.values()))
        raise ValueError(
            f"no attn2 at resolution {resolution}; available: {available} (stage_two.attention."
            "resolution: SD 1.5 at 512 px reads 16, SDXL at 1024 px 32, as --env=sdxl sets)"
        )
    return names


class _CaptureProcessor:
    """Attention processor that computes the probabilities explicitly and hands them to the capture.

    The probabilities come from the module's own ``attn.get_attention_scores`` (diffusers'
    classic ``AttnProcessor`` path), so the module's ``scale``, ``upcast_attention`` and
    ``upcast_softmax`` settings and its attention mask are honoured exactly; the output is the same
    computation as ``AttnProcessor``, with the probabilities kept (with gradient) for the loss.
    """

    def __init__(self, capture: CrossAttentionCapture, name: str) -> None:
        self.capture = capture
        self.name = name

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        if not self.capture.enabled:
            return self.capture.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        queries, keys = query.shape[2], key.shape[2]
        mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        probs = attn.get_attention_scores(
            query.reshape(batch * heads, queries, head_dim),
            key.reshape(batch * heads, keys, head_dim),
            mask,
        )  # (B * heads, N, L): honours attn.scale and the upcast flags
        self.capture._store(self.name, probs.view(batch, heads, queries, keys))

        hidden_states = torch.bmm(probs, value.reshape(batch * heads, keys, head_dim))
        hidden_states = hidden_states.view(batch, heads, queries, head_dim).transpose(1, 2)
        hidden_states = hidden_states.reshape(batch, queries, heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states.to(query.dtype))
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class CrossAttentionCapture:
    """Record cross-attention probabilities of selected ``attn2`` layers, SDPA everywhere else.

    Use as a context manager or call :meth:`install` / :meth:`remove`::

        with CrossAttentionCapture(unet, resolution=16) as capture:
            noise_pred = unet(noisy, t, text_states).sample
            maps = capture.token_maps(token_positions)  # (B, K, 16, 16), with gradient

    By default the stored probabilities are cleared at the start of every UNet forward, so they
    always belong to the latest forward pass and maps (with their autograd graph) never pile up
    across steps; :meth:`clear` frees them early. Only the head-mean of each layer is stored
    unless ``keep_heads``. For
    a second UNet pass whose maps are not wanted (the official two-pass identity loss), set
    :attr:`enabled` to False around it: those layers then run the fused SDPA processor and the
    first pass's maps are left as they were. With gradient
    checkpointing the recomputation during backward stores maps again; they are dropped at the
    next forward. Works with peft LoRA adapters on ``to_q``/``to_k``/``to_v``
    (the projections are called as modules) and with classifier-free guidance on or off (the
    batch is whatever the UNet received).

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        resolution: latent resolution of the layers to capture (``None``: see
            :func:`cross_attention_layers`).
        layer_names: explicit ``attn2`` module names instead of ``resolution``.
        clear_each_forward: clear the stored maps at the start of each UNet forward.
        keep_heads: store every head's map instead of the head-mean (needed for Eq. 8 in the
            authors' order, ``attention.scale_order: scale_then_average``; ``heads`` x the
            memory).
        latent_size: side of the latents the UNet will run on, at which ``resolution`` is read
            (default ``unet.config.sample_size``).
    """

    def __init__(
        self,
        unet: nn.Module,
        resolution: int | None = None,
        layer_names: Sequence[str] | None = None,
        clear_each_forward: bool = True,
        keep_heads: bool = False,
        latent_size: int | None = None,
    ) -> None:
        self.unet = unet
        self.keep_heads = keep_heads
        self.layer_names = (
            list(layer_names)
            if layer_names
            else cross_attention_layers(unet, resolution, latent_size=latent_size)
        )
        self.clear_each_forward = clear_each_forward
        self.enabled = True
        self._maps: dict[str, list[Tensor]] = {}
        self._sample_hw: tuple[int, int] | None = None
        self._previous: dict[str, Any] = {}
        self._hook: Any = None
        self._fallback: Any = None

    # installation -------------------------------------------------------------------------
    def install(self) -> CrossAttentionCapture:
        """Set the capture processor on the selected ``attn2`` modules (others untouched)."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        if self._previous:
            return self
        self._fallback = AttnProcessor2_0()
        modules = dict(self.unet.named_modules())
        for name in self.layer_names:
            module = modules[name]
            self._previous[name] = module.processor
            module.set_processor(_CaptureProcessor(self, name))
        self._hook = self.unet.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        return self

    def remove(self) -> None:
        """Restore the processors that were there before (``AttnProcessor2_0`` by default)."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        modules = dict(self.unet.named_modules())
        for name, previous in self._previous.items():
            restored = previous if previous is not None else AttnProcessor2_0()
            if isinstance(restored, _CaptureProcessor):
                restored = AttnProcessor2_0()
            modules[name].set_processor(restored)
        self._previous = {}
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.clear()

    def __enter__(self) -> CrossAttentionCapture:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Within: nothing is stored and the captured layers run SDPA; the maps captured before
        are kept (:attr:`enabled` is restored on exit)."""
        before, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = before

    # recording ----------------------------------------------------------------------------
    def fallback(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None,
        attention_mask: Tensor | None,
        temb: Tensor | None,
    ) -> Tensor:
        """Run the fused SDPA processor (used while :attr:`enabled` is False)."""
        return self._fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _before_forward(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if sample is not None:
            self._sample_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        if self.clear_each_forward and self.enabled:
            self._maps = {}

    def _store(self, name: str, probs: Tensor) -> None:
        """Keep one layer's probabilities ``(B, heads, N_query, L_text)``: every head when
        :attr:`keep_heads`, else their mean ``(B, 1, N_query, L_text)``."""
        kept = probs if self.keep_heads else probs.mean(dim=1, keepdim=True)
        self._maps.setdefault(name, []).append(kept)

    def clear(self) -> None:
        """Forget every stored map."""
        self._maps = {}

    @property
    def num_captured(self) -> int:
        """How many layer calls are stored."""
        return sum(len(items) for items in self._maps.values())

    def _spatial_shape(self, num_queries: int) -> tuple[int, int]:
        if self._sample_hw is not None:
            height, width = self._sample_hw
            factor = math.sqrt(height * width / num_queries)
            h, w = round(height / factor), round(width / factor)
            if h * w == num_queries:
                return h, w
        side = math.isqrt(num_queries)
        if side * side != num_queries:
            raise ValueError(f"cannot infer a spatial shape for {num_queries} queries")
        return side, side

    def token_maps(
        self,
        token_indices: Tensor | Sequence[int] | Sequence[Sequence[int]],
        per_map: bool = False,
    ) -> Tensor:
        """Cross-attention maps of the given text-token positions.

        Args:
            token_indices: positions in the 77-token text sequence: a ``(B, K)`` tensor, a list of
                ``B`` lists of ``K`` positions, or one list of ``K`` positions for every sample.
            per_map: return every stored map (each layer call's head-mean, or each head of each
                layer call with :attr:`keep_heads`) instead of their mean.

        Returns:
            ``(B, K, h, w)``: the mean over captured layer calls of each layer's head-mean; with
            ``per_map`` ``(B, K, M, h, w)``. Differentiable when captured with grad.

        Raises:
            RuntimeError: nothing was captured since the last clear.
        """
        stored = [item for items in self._maps.values() for item in items]
        if not stored:
            raise RuntimeError("no cross-attention captured: run the UNet inside the capture")
        shapes = {(item.shape[0], *item.shape[2:]) for item in stored}
        if len(shapes) != 1:
            raise ValueError(f"captured layers differ in shape: {sorted(shapes)}")
        if per_map:
            maps = torch.cat(stored, dim=1)  # (B, M, N, L)
        else:
            maps = torch.stack([item.mean(dim=1) for item in stored]).mean(dim=0).unsqueeze(1)
        batch, count, num_queries, _ = maps.shape
        index = torch.as_tensor(token_indices, dtype=torch.long, device=maps.device)
        if index.ndim == 1:
            index = index.unsqueeze(0).expand(batch, -1)
        if index.shape[0] != batch:
            raise ValueError(f"token_indices has {index.shape[0]} rows for a batch of {batch}")
        tokens = index.shape[1]
        picked = torch.gather(maps, 3, index[:, None, None, :].expand(-1, count, num_queries, -1))
        h, w = self._spatial_shape(num_queries)
        picked = picked.permute(0, 3, 1, 2).reshape(batch, tokens, count, h, w)
        return picked if per_map else picked[:, :, 0]


def attention_mass_inside(attention_maps: Tensor, region_masks: Tensor) -> Tensor:
    """Fraction of each token's attention mass that falls inside its region mask.

    The measurement behind the paper's claim that attention refocusing (Eq. 8) keeps [V1] on the
    face and [V2] off it: ``sum(A * M) / sum(A)`` per map, with the raw (not min-max scaled)
    probabilities; masks larger than the maps are area-averaged down to the map size.

    Args:
        attention_maps: ``(B, K, h, w)`` from :meth:`CrossAttentionCapture.token_maps`.
        region_masks: ``(B, K, H, W)`` or ``(B, 1, H, W)`` in ``[0, 1]``.

    Returns:
        ``(B, K)`` fractions in ``[0, 1]``.
    """
    masks = region_masks.to(attention_maps.dtype)
    if masks.shape[-2:] != attention_maps.shape[-2:]:
        masks = F.adaptive_avg_pool2d(masks, attention_maps.shape[-2:])
    inside = (attention_maps * masks).flatten(2).sum(-1)
    return inside / attention_maps.flatten(2).sum(-1).clamp_min(1e-12)
