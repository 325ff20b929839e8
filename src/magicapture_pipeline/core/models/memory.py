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
import functools
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


def frozen_weight_dtype(config: MemoryConfig, mixed_precision: str) -> torch.dtype | None:
    """The dtype the frozen weights are held in (``config.frozen_weights_16bit``): the mixed
    precision's 16-bit type, or ``None`` (stay as loaded) when the switch or mixed precision
    is off (``mixed_precision`` as the accelerator resolved it: ``"no"`` on CPU)."""
    if not config.frozen_weights_16bit:
        return None
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)


def cast_frozen_weights(
    modules: Sequence[nn.Module], dtype: torch.dtype, keep: Sequence[nn.Module] = ()
) -> int:
    """Cast, in place, every floating-point parameter of ``modules`` that does not require grad
    to ``dtype``; trainable ones (LoRA) and the parameters of ``keep`` (the token tables the
    placeholder rows are written into) stay as they are. Returns the bytes saved (diffusers'
    ``weight_dtype`` + ``cast_training_params``, done per parameter so LoRA never leaves fp32)."""
    kept = {id(p) for module in keep for p in module.parameters()}
    saved = 0
    for module in modules:
        for param in module.parameters():
            if param.requires_grad or id(param) in kept or not param.is_floating_point():
                continue
            if param.dtype != dtype:
                before = param.numel() * param.element_size()
                param.data = param.data.to(dtype)
                saved += before - param.numel() * param.element_size()
    return saved


def hold_frozen_weights(  # noqa: PLR0913 (the trainer's models and the two settings)
    config: MemoryConfig,
    mixed_precision: str,
    *,
    unet: nn.Module,
    text_encoders: Sequence[nn.Module],
    vae: nn.Module,
    family: str,
    vae_fp32: bool = False,
) -> torch.dtype | None:
    """``config.frozen_weights_16bit`` in a trainer, once its trainable parameters are marked:
    the frozen UNet, text encoders and VAE in the mixed precision's 16-bit dtype. The token
    tables stay fp32 (the fp32 placeholder rows are written into and exported from them; the
    rest of CLIP-L's table is 76 MB more) and their output is cast to 16 bits by a hook, so the
    encoder runs in one dtype (CPU's autocast leaves layer_norm's weights as they are). The VAE
    stays fp32 when ``vae_fp32`` and for SDXL under fp16 (its VAE runs outside fp16 autocast,
    ``core.training.loop.vae_precision``, as diffusers' SDXL LoRA script keeps it fp32).
    Returns that dtype, or ``None`` when nothing was cast."""
    from magicapture_pipeline.core.models.loading import SDXL

    dtype = frozen_weight_dtype(config, mixed_precision)
    if dtype is not None:
        vae_fp32 = vae_fp32 or (family == SDXL and dtype == torch.float16)
        tables = [encoder.get_input_embeddings() for encoder in text_encoders]
        modules = [unet, *text_encoders, *([] if vae_fp32 else [vae])]
        cast_frozen_weights(modules, dtype, keep=tables)
        for table in tables:  # its output joins the 16-bit position embeddings and layers
            table.register_forward_hook(functools.partial(_output_as, dtype))
    return dtype


def _output_as(dtype: torch.dtype, module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: a floating-point ``output`` cast to ``dtype`` (differentiable)."""
    del module, args
    return output.to(dtype) if output.is_floating_point() else output


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
