"""Eq. 8 as a loss term of stage two: attention refocusing on the placeholders' captured maps.

The loss itself is :func:`core.losses.attention_refocusing_loss`; the cross-attention capture is
:class:`core.models.attention.CrossAttentionCapture`. :class:`AttentionRefocusingTerm` is built
from the ``attention`` section of a ``StageTwoConfig`` (it installs the capture on the configured
layers), picks the placeholder tokens present in a prompt, pairs each with its region ([V1]: the
face, [V2]: the rest) and returns Eq. 8 on the maps the UNet forward just captured. The report
behind the heatmaps is :mod:`.attention_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from magicapture_pipeline.core import losses
from magicapture_pipeline.core.training.loop import region_mask

if TYPE_CHECKING:
    from magicapture_pipeline.config.loss_terms import AttentionConfig
    from magicapture_pipeline.core.models.attention import CrossAttentionCapture


def mass_fraction(maps: Tensor, regions: Tensor) -> float:
    """Share of the attention mass of ``maps`` (N, 1, h, w) that lies inside ``regions``."""
    total = maps.flatten(1).sum(1).clamp_min(1e-12)
    inside = (maps * regions).flatten(1).sum(1)
    return float((inside / total).mean())


def placeholder_positions(ids: Tensor, token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """``[(position in the prompt's tokens, index into token_ids)]`` of the placeholders present
    in the first prompt of ``ids`` (index 0 is [V1], 1 is [V2])."""
    found = []
    row = ids[0].tolist()
    for k, token_id in enumerate(token_ids):
        if token_id in row:
            found.append((row.index(token_id), k))
    return found


class AttentionRefocusingTerm:
    """Eq. 8 of a stage-two micro-batch (arXiv 2309.06895 v2, Method: Attention Refocusing).

    Args:
        config: the ``attention`` section (an ``AttentionConfig``), read on every call.
        capture: the installed cross-attention capture of the UNet.
        token_ids: the ids of [V1] and [V2], in that order.
        mask_floor: the trainer's ``mask_floor`` (region masks softened as for Eq. 4-6).
        device: where the region masks go (the trainer's device).
    """

    def __init__(
        self,
        config: AttentionConfig,
        capture: CrossAttentionCapture,
        token_ids: Sequence[int],
        mask_floor: float,
        device: torch.device,
    ) -> None:
        self.config = config
        self.capture = capture
        self.token_ids = list(token_ids)
        self.mask_floor = mask_floor
        self.device = device

    @classmethod
    def from_config(
        cls,
        config: AttentionConfig,
        *,
        unet: torch.nn.Module,
        token_ids: Sequence[int],
        mask_floor: float,
        device: torch.device,
        latent_size: int | None = None,
    ) -> AttentionRefocusingTerm | None:
        """The term with its capture installed on ``unet``; ``None`` when ``config.enabled`` is
        off (no capture: every attention stays on SDPA). ``latent_size``: the training latents'
        side, which ``config.resolution`` is read at (default the UNet's ``sample_size``)."""
        if not config.enabled:
            return None
        from magicapture_pipeline.core.models.attention import CrossAttentionCapture

        capture = CrossAttentionCapture(
            unet,
            resolution=config.resolution,
            layer_names=config.layers or None,
            keep_heads=config.scale_order == "scale_then_average",
            latent_size=latent_size,
        )
        capture.install()
        return cls(config, capture, token_ids, mask_floor, device)

    @property
    def layer_names(self) -> list[str]:
        """The captured ``attn2`` modules."""
        return list(self.capture.layer_names)

    @property
    def weight(self) -> float:
        """Eq. 8's weight in the stage-two total (``attention.weight``)."""
        return self.config.weight

    def __call__(self, ids: Tensor, face_mask: Tensor) -> tuple[Tensor, dict[str, Any]] | None:
        """Eq. 8 on the maps captured by the last UNet forward, for the placeholders in the
        prompt ``ids``; ``face_mask`` (1, H, W) is the example's. A token whose region is empty
        (a reference without a face has no region for [V1]) is left out rather than pushed off
        the image; ``None`` when no token is left.

        Returns:
            The unweighted loss and its log ``{"loss_attn": value}``.
        """
        has_face = bool(face_mask.sum() > 0)
        has_rest = bool((1.0 - face_mask).sum() > 0)
        positions = [
            (p, k)
            for p, k in placeholder_positions(ids, self.token_ids)
            if (has_face if k == 0 else has_rest)
        ]
        if not positions:
            return None
        order = self.config.scale_order
        maps = self.capture.token_maps(
            [[p for p, _ in positions]], per_map=order == "scale_then_average"
        )
        floor, device = self.mask_floor, self.device
        masks = torch.cat(
            [region_mask(face_mask, k == 0, floor=floor, device=device) for _, k in positions],
            dim=1,
        )
        loss = losses.attention_refocusing_loss(maps.float(), masks.float(), order=order)
        return loss, {"loss_attn": loss.item()}

    def close(self) -> None:
        """Remove the capture (the processors go back to SDPA)."""
        self.capture.remove()
