"""Memory options (config.memory): what each switch builds, and gradient checkpointing that
survives the authors' two-pass Eq. 7 (capture on, then paused)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from test_attention import _inputs, _tiny_unet

from conftest import make_examples, random_identity
from magicapture_pipeline.config.loss_terms import AttentionConfig
from magicapture_pipeline.config.memory import MemoryConfig
from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig
from magicapture_pipeline.core.models.attention import CrossAttentionCapture, _CaptureProcessor
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.models.memory import apply_memory_options
from magicapture_pipeline.core.training import StageOneTrainer, StageTwoTrainer

ALL_ON = MemoryConfig(
    unet_gradient_checkpointing=True,
    text_encoder_gradient_checkpointing=True,
    vae_gradient_checkpointing=True,
    vae_tile_latent=8,
    attention="eager",
)


def _two_pass_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
    """Eq. 8's maps from a first forward, a second forward with the capture paused (the
    authors' Eq. 7 pass), one backward: the gradients of every UNet weight."""
    unet = _tiny_unet().train()
    unet.requires_grad_(True)
    config = MemoryConfig(unet_gradient_checkpointing=checkpointing)
    apply_memory_options(config, unet=unet, text_encoders=[], vae=torch.nn.Identity())
    capture = CrossAttentionCapture(unet, resolution=8).install()
    sample, timesteps, states = _inputs(batch=1)
    first = unet(sample, timesteps, states).sample
    maps = sum(m.pow(2).sum() for kept in capture._maps.values() for m in kept)
    with capture.paused():
        second = unet(sample, timesteps + 1, states).sample
    (first.pow(2).mean() + second.pow(2).mean() + maps).backward()
    capture.remove()
    return {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}


def test_checkpointing_replays_the_capture_state_of_each_pass():
    plain = _two_pass_grads(checkpointing=False)
    checkpointed = _two_pass_grads(checkpointing=True)  # CheckpointError before the fix
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _stage_two(tiny_dir, memory: MemoryConfig) -> StageTwoTrainer:
    config = StageTwoConfig(
        max_steps=1, gradient_accumulation_steps=1, mixed_precision="no", heatmap_every=0,
        memory=memory,
        attention=AttentionConfig(resolution=8),
        identity=random_identity(),
    )  # fmt: skip
    return StageTwoTrainer(load_components(tiny_dir), make_examples(), config)


def _kinds(unet) -> dict[str, str]:
    return {name: type(p).__name__ for name, p in unet.attn_processors.items()}


@pytest.mark.parametrize("memory", [MemoryConfig(), ALL_ON], ids=["defaults", "all_on"])
def test_each_switch_changes_what_stage_two_builds(tiny_dir, memory):
    trainer = _stage_two(tiny_dir, memory)
    assert trainer.unet.is_gradient_checkpointing is memory.unet_gradient_checkpointing
    assert trainer.text_encoder.is_activation_checkpointing is (
        memory.text_encoder_gradient_checkpointing
    )
    assert trainer.vae.is_gradient_checkpointing is memory.vae_gradient_checkpointing
    assert trainer.vae.use_tiling is (memory.vae_tile_latent is not None)
    if memory.vae_tile_latent is not None:
        assert trainer.vae.tile_latent_min_size == memory.vae_tile_latent
        scale = 2 ** (len(trainer.vae.config.block_out_channels) - 1)
        assert trainer.vae.tile_sample_min_size == memory.vae_tile_latent * scale
    captured = set(trainer.attention_term.layer_names)
    kinds = _kinds(trainer.unet)
    assert captured and {kinds[f"{n}.processor"] for n in captured} == {"_CaptureProcessor"}
    others = {kind for name, kind in kinds.items() if name[: -len(".processor")] not in captured}
    wanted = AttnProcessor2_0 if memory.attention == "sdpa" else AttnProcessor
    assert others == {wanted.__name__}
    trainer.train(progress=False)  # one real step with every switch on
    trainer.attention_term.close()  # the capture leaves the chosen processor behind
    assert set(_kinds(trainer.unet).values()) == {wanted.__name__}


def test_stage_one_honours_the_switches(tiny_dir):
    config = StageOneConfig(max_steps=1, mixed_precision="no", memory=ALL_ON)
    trainer = StageOneTrainer(load_components(tiny_dir), make_examples(), config)
    assert trainer.unet.is_gradient_checkpointing
    assert trainer.text_encoder.is_activation_checkpointing
    assert not any(isinstance(p, _CaptureProcessor) for p in trainer.unet.attn_processors.values())
    assert set(_kinds(trainer.unet).values()) == {"AttnProcessor"}
