"""The live-bytes count behind the memory estimate (speed_bench.memory), against hand counts."""

from __future__ import annotations

import torch

from magicapture_pipeline.speed_bench import meta_step as ms
from magicapture_pipeline.speed_bench.memory import LiveBytes


def test_live_bytes_counts_new_storages_once_and_frees_them():
    counter = LiveBytes()
    with counter:
        a = torch.empty(1000, device=ms.META)  # 4000 bytes
        view = a[:10]  # a view: no new storage
        b = torch.empty(250, device=ms.META, dtype=torch.float16)  # 500 bytes
        assert counter.live == 4500
        del b
        assert counter.live == 4000
        c = torch.empty(100, device=ms.META, dtype=torch.float64)  # 800 bytes
        del a, view, c
    assert (counter.live, counter.peak) == (0, 4800)


def test_saved_activations_count_until_backward():
    with ms.META:
        layers = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64)
        )
    x = torch.empty(32, 64, device=ms.META)
    counter = LiveBytes()
    with counter:
        out = layers(x)
        # tanh's output (saved by tanh and by the second Linear) and the final output; the first
        # Linear's output died once tanh had read it (tanh saves its result, not its input)
        held = counter.live
        out.sum().backward()
        del out
    assert held == 2 * 32 * 64 * 4
    # the weight gradients (3 tensors of 64x64 + biases) outlive the step
    grads = sum(p.grad.numel() * 4 for p in layers.parameters())
    assert counter.live == grads


def test_checkpointing_lowers_the_estimate_and_survives_the_two_pass_step():
    from magicapture_pipeline.config.memory import MemoryConfig
    from magicapture_pipeline.speed_bench.gpu_run import dry_sizes
    from magicapture_pipeline.speed_bench.memory import estimate, trainer_bytes

    model = ms.build_meta_model(
        "sd15_dry", dtype=torch.float16, size=dry_sizes()["sd15_dry"], arcface_arch="r18"
    )
    variant = "stage2_authors_step"  # Eq. 8 capture, then the paused second pass (Eq. 7)
    plain = estimate(model, variant)
    checkpointed = MemoryConfig(unet_gradient_checkpointing=True)
    # raised torch.utils.checkpoint.CheckpointError before the replaying checkpoint
    found = estimate(model, variant, checkpointed)
    assert found["activations_peak"] < plain["activations_peak"]
    assert found["weights"] == plain["weights"]
    # the UNet's autocast copies are recomputed inside its checkpoints, not kept
    unet_half = 2 * sum(p.numel() for p in model.unet.parameters() if not p.requires_grad)
    fp32 = {"frozen_weights_16bit": False}  # autocast copies exist for fp32-held weights only
    held = trainer_bytes(model, variant, MemoryConfig(**fp32))
    checkpointed_fp32 = checkpointed.model_copy(update=fp32)
    assert (
        held["autocast_copies_bound"]
        - trainer_bytes(model, variant, checkpointed_fp32)["autocast_copies_bound"]
        == unet_half
    )


def test_frozen_16bit_halves_the_frozen_weights_and_keeps_only_arcface_copies():
    from magicapture_pipeline.config.memory import MemoryConfig
    from magicapture_pipeline.speed_bench.flops import DEFAULT_STEP
    from magicapture_pipeline.speed_bench.gpu_run import dry_sizes
    from magicapture_pipeline.speed_bench.memory import trainer_bytes

    def frozen(*modules) -> int:
        return sum(p.numel() for m in modules for p in m.parameters() if not p.requires_grad)

    sizes = dry_sizes()
    for name, dtype in (("sd15_dry", torch.float16), ("sdxl_dry", torch.float16),
                        ("sdxl_dry", torch.bfloat16)):  # fmt: skip
        model = ms.build_meta_model(name, dtype=dtype, size=sizes[name], arcface_arch="r18")
        fp32 = trainer_bytes(model, DEFAULT_STEP, MemoryConfig(frozen_weights_16bit=False))
        half = trainer_bytes(model, DEFAULT_STEP, MemoryConfig())
        vae_fp32 = name == "sdxl_dry" and dtype == torch.float16  # outside fp16 autocast
        cast = frozen(model.unet, *model.text_encoders, *([] if vae_fp32 else [model.vae]))
        assert fp32["weights_fp32"] - half["weights_fp32"] == 2 * cast, (name, dtype)
        # the token tables train: they stay fp32 (4 bytes) in both
        assert any(p.requires_grad for e in model.text_encoders for p in e.parameters())
        # Eq. 7 runs in the default step: ArcFace (fp32) is the only network autocast copies
        assert half["autocast_copies_bound"] == 2 * frozen(model.arcface), (name, dtype)
        assert half["autocast_copies_bound"] < fp32["autocast_copies_bound"]
