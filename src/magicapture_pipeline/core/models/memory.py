"""The memory options of ``config.memory.MemoryConfig`` applied to the models a trainer holds.

Gradient checkpointing of the UNet uses :func:`replaying_checkpoint`: torch recomputes a block's
forward during backward, and must see the same ops as the first time (else
``torch.utils.checkpoint.CheckpointError``: "Recomputed values ... have different metadata").
Eq. 8's capture chooses its ops by a flag (``CrossAttentionCapture.enabled``: hand-computed
attention with the maps kept, or SDPA while paused), and the authors' two-pass Eq. 7 pauses it for
the second forward; by backward time the flag holds whatever was set last, so one of the two
passes was recomputed on the other path. The replaying checkpoint records the flags of the
captures inside a block when its forward runs and sets them again while it is recomputed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from magicapture_pipeline.config.memory import MemoryConfig


def _captures(module: nn.Module) -> list[Any]:
    """The Eq. 8 captures whose processors sit inside ``module``."""
    from magicapture_pipeline.core.models.attention import _CaptureProcessor

    found: dict[int, Any] = {}
    for sub in module.modules():
        processor = getattr(sub, "processor", None)
        if isinstance(processor, _CaptureProcessor):
            found[id(processor.capture)] = processor.capture
    return list(found.values())


@contextlib.contextmanager
def _flags(states: Sequence[tuple[Any, bool]]) -> Iterator[None]:
    before = [(capture, capture.enabled) for capture, _ in states]
    for capture, enabled in states:
        capture.enabled = enabled
    try:
        yield
    finally:
        for capture, enabled in before:
            capture.enabled = enabled


def replaying_checkpoint(module: nn.Module, *args: Any) -> Any:
    """diffusers' ``gradient_checkpointing_func``: non-reentrant ``checkpoint`` of ``module``
    whose recomputation runs with the capture flags of the original forward."""
    states = [(capture, bool(capture.enabled)) for capture in _captures(module)]

    def run(*inputs: Any) -> Any:
        with _flags(states):
            return module(*inputs)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)


def apply_memory_options(
    config: MemoryConfig, *, unet: nn.Module, text_encoders: Sequence[nn.Module], vae: nn.Module
) -> None:
    """Switch on what ``config`` asks for, in place (call before Eq. 8's capture installs, so
    its processors replace the chosen ones and are restored to them)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0() if config.attention == "sdpa" else AttnProcessor()
    unet.set_attn_processor(processor)
    if config.unet_gradient_checkpointing:
        unet.enable_gradient_checkpointing(gradient_checkpointing_func=replaying_checkpoint)
    if config.text_encoder_gradient_checkpointing:
        for encoder in text_encoders:
            encoder.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
    if config.vae_gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    if config.vae_tile_latent is not None:
        vae.enable_tiling()
        vae.tile_latent_min_size = config.vae_tile_latent
        vae.tile_sample_min_size = config.vae_tile_latent * 2 ** (
            len(vae.config.block_out_channels) - 1
        )
