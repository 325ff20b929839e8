"""memory.frozen_weights_16bit (issue 19): under mixed precision the frozen UNet, VAE and text
encoder are held in 16 bits while LoRA, the placeholder rows and the token tables stay fp32,
and the step still trains; with mixed precision off (every CPU run, the demo) nothing changes.

CPU autocast supports bf16 only, and the trainers force mixed precision off on CPU, so the
trainer tests hand them an ``Accelerator(mixed_precision="bf16", cpu=True)``.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from conftest import make_examples
from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.config.memory import MemoryConfig
from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.models.memory import frozen_weight_dtype, hold_frozen_weights
from magicapture_pipeline.core.training import StageOneTrainer, StageTwoTrainer
from magicapture_pipeline.core.training import loop as training_loop

STEPS = 2


def _fresh_accelerator(mixed_precision: str, device: str | None) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton
    return Accelerator(mixed_precision=mixed_precision, cpu=True)


@pytest.fixture
def bf16_on_cpu(monkeypatch):
    """The trainers' accelerator with the asked mixed precision on CPU (they force 'no'
    there); the accelerate state is reset after, so later tests get their own."""
    monkeypatch.setattr(training_loop, "build_accelerator", _fresh_accelerator)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _stage_two(tiny_dir, memory: MemoryConfig, mixed: str = "bf16") -> StageTwoTrainer:
    config = StageTwoConfig(
        max_steps=STEPS, gradient_accumulation_steps=1, mixed_precision=mixed, heatmap_every=0,
        memory=memory, learning_rate=1e-2, embedding_learning_rate=1e-2,
        attention=AttentionConfig(resolution=8),
        identity=IdentityConfig(random_init=True, arch="r18", threshold_fraction=1.0),
    )  # fmt: skip
    return StageTwoTrainer(load_components(tiny_dir), make_examples(), config)


def _dtypes(module: torch.nn.Module, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if p.requires_grad is trainable}


def test_the_switch_maps_mixed_precision_to_the_frozen_dtype():
    on, off = MemoryConfig(), MemoryConfig(frozen_weights_16bit=False)
    assert on.frozen_weights_16bit  # the library default (diffusers' weight_dtype)
    assert frozen_weight_dtype(on, "fp16") is torch.float16
    assert frozen_weight_dtype(on, "bf16") is torch.bfloat16
    assert frozen_weight_dtype(on, "no") is None  # CPU: the accelerator resolved 'no'
    assert frozen_weight_dtype(off, "fp16") is None


def test_stage_two_holds_frozen_weights_in_bf16_and_still_trains(tiny_dir, bf16_on_cpu):
    trainer = _stage_two(tiny_dir, MemoryConfig())
    assert trainer.accelerator.mixed_precision == "bf16"
    assert trainer.frozen_dtype is torch.bfloat16
    encoder = trainer.text_encoder
    table = encoder.get_input_embeddings().weight
    assert _dtypes(trainer.unet, trainable=False) == {torch.bfloat16}
    assert _dtypes(trainer.vae, trainable=False) == {torch.bfloat16}
    frozen_text = {p.dtype for n, p in encoder.named_parameters()
                   if not p.requires_grad and p is not table}  # fmt: skip
    assert frozen_text == {torch.bfloat16}
    assert table.dtype is torch.float32  # the placeholder rows are written into it and exported
    lora = {n: p for n, p in trainer.unet.named_parameters() if p.requires_grad}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    rows = trainer.placeholder_rows.params()
    assert {p.dtype for p in rows} == {torch.float32}
    before = {n: p.detach().clone() for n, p in lora.items()}
    rows_before = [p.detach().clone() for p in rows]
    frozen_before = {n: p.detach().clone() for n, p in trainer.unet.named_parameters()
                     if not p.requires_grad}  # fmt: skip
    history = trainer.train(progress=False)
    assert len(history) == STEPS
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in history)
    assert any(row.get("id_active") for row in history)  # Eq. 7 ran through the bf16 VAE
    moved = [n for n, p in lora.items() if "lora_B" in n and not torch.equal(p, before[n])]
    assert len(moved) == sum("lora_B" in n for n in lora)  # gradients reached every LoRA B
    assert all(not torch.equal(p, b) for p, b in zip(rows, rows_before, strict=True))
    assert {p.dtype for p in lora.values()} | {p.dtype for p in rows} == {torch.float32}
    for name, param in trainer.unet.named_parameters():
        if not param.requires_grad:
            assert param.dtype is torch.bfloat16 and torch.equal(param, frozen_before[name])
    embeddings = trainer.placeholder_embeddings()  # SD 1.x: one table, K x hidden rows
    for index, token in enumerate(trainer.tokens):  # exported from fp32, not rounded to bf16
        assert torch.equal(embeddings[token].float(), rows[0][index].detach())


def test_stage_one_holds_frozen_weights_in_bf16_and_trains_the_rows(tiny_dir, bf16_on_cpu):
    config = StageOneConfig(max_steps=2, mixed_precision="bf16", learning_rate=1e-2)
    trainer = StageOneTrainer(load_components(tiny_dir), make_examples(), config)
    assert _dtypes(trainer.unet, trainable=False) == {torch.bfloat16}
    rows = trainer.placeholder_rows.params()
    start = [p.detach().clone() for p in rows]
    trainer.train(progress=False)
    assert {p.dtype for p in rows} == {torch.float32}
    assert all(not torch.equal(p, s) for p, s in zip(rows, start, strict=True))


def test_switch_off_or_mixed_precision_off_leaves_every_weight_fp32(tiny_dir, bf16_on_cpu):
    off = _stage_two(tiny_dir, MemoryConfig(frozen_weights_16bit=False))
    no_mixed = _stage_two(tiny_dir, MemoryConfig(), mixed="no")  # what every CPU run resolves
    for trainer in (off, no_mixed):
        assert trainer.frozen_dtype is None
        for module in (trainer.unet, trainer.vae, trainer.text_encoder):
            assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_sdxl_vae_stays_fp32_under_fp16_and_the_authors_fp32_decode_keeps_it(tiny_dir):
    parts = load_components(tiny_dir)
    kwargs = {"unet": parts.unet, "text_encoders": [parts.text_encoder], "vae": parts.vae}
    assert hold_frozen_weights(MemoryConfig(), "fp16", family="sdxl", **kwargs) is torch.float16
    assert _dtypes(parts.unet, trainable=False) == {torch.float16}
    assert _dtypes(parts.vae, trainable=False) == {torch.float32}  # runs outside fp16 autocast
    parts = load_components(tiny_dir)
    kwargs = {"unet": parts.unet, "text_encoders": [parts.text_encoder], "vae": parts.vae}
    hold_frozen_weights(MemoryConfig(), "bf16", family="sd15", vae_fp32=True, **kwargs)
    assert _dtypes(parts.vae, trainable=False) == {torch.float32}
    assert _dtypes(parts.unet, trainable=False) == {torch.bfloat16}
