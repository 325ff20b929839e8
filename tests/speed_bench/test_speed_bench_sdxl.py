"""The benchmark's SDXL sizes: the CPU SDXL-like size runs every figure through the trainers (no
timing asserted), and the GPU size is SDXL base's architecture at 1024 px."""

from __future__ import annotations

import dataclasses
import math

import pytest

from magicapture_pipeline import speed_bench


@pytest.fixture
def quick_sdxl(monkeypatch):
    spec = dataclasses.replace(
        speed_bench.SIZES["sdxl_like_256"],
        resolution=64,
        repeats=1,
        warmup=0,
        arcface_arch="r18",
        ar_resolution=2,
    )  # fmt: skip  (64 px: latents 8, levels 8 / 4 / 2; the deepest level plays SDXL's 32)
    monkeypatch.setitem(speed_bench.SIZES, "sdxl_like_256", spec)
    return spec


@pytest.mark.slow
def test_sdxl_like_size_reports_every_figure_through_the_trainers(quick_sdxl):
    result = speed_bench.measure_size("sdxl_like_256", profile_missed=False)
    assert result["engine"] == "trainer" and "engine_error" not in result
    # what is reported, never how fast (see test_speed_bench.py)
    for key in (*speed_bench.STAGE_ONE_FIGURES, *speed_bench.STAGE_TWO_FIGURES,
                *speed_bench.RATIOS):  # fmt: skip
        assert math.isfinite(result[key]), key
    assert "text_encoder_2" in result["model"]["parameters_m"]
    blocks = {name.split(".attentions.")[0] for name in result["capture_layers"]}
    assert blocks == {"down_blocks.2", "up_blocks.0"}  # SDXL's deepest level, 10 layers deep
    assert len(result["capture_layers"]) == 2 * 10 + 3 * 10
    assert math.isfinite(result["breakdown_s"]["unet_fwd_bwd_s"])


def test_sdxl_sizes_and_the_harness_refusal():
    assert (
        speed_bench.SIZES["sdxl_1024"].gpu_only
        and speed_bench.SIZES["sdxl_1024"].resolution == 1024
    )
    assert "sdxl_1024" not in speed_bench.default_sizes("cpu")
    assert "sdxl_like_256" in speed_bench.default_sizes("cpu")
    model = speed_bench.BenchModel(None, None, None, None, None, 64, family="sdxl")
    with pytest.raises(ValueError, match="harness engine assembles SD 1.x steps only"):
        speed_bench.StepBench(model, "r18")


@pytest.mark.parametrize("name", ["sdxl_like_256", "sdxl_1024"])
def test_sdxl_size_configs_are_consistent_on_the_meta_device(name):
    """The GPU size cannot be built here (10 GB of fp32 weights): check its parts fit together."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    spec = speed_bench.SIZES[name]
    text, text_2 = spec.text, spec.text_2
    assert spec.unet["cross_attention_dim"] == text["hidden_size"] + text_2["hidden_size"]
    time_ids = 6 * spec.unet["addition_time_embed_dim"]
    assert spec.unet["projection_class_embeddings_input_dim"] == time_ids + text_2["projection_dim"]
    with init_empty_weights():
        unet = UNet2DConditionModel(**{**spec.unet, "sample_size": spec.resolution // 8})
        CLIPTextModelWithProjection(CLIPTextConfig(**text_2))
        levels = len(spec.vae["block_out_channels"])
        AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            **spec.vae,
        )
    from magicapture_pipeline.core.models.attention import cross_attention_layers

    layers = cross_attention_layers(unet, spec.ar_resolution)
    assert {n.split(".attentions.")[0] for n in layers} == {"down_blocks.2", "up_blocks.0"}
    assert len(layers) == 50
