"""The benchmark writes every figure the issue asks for (no timing is asserted)."""

from __future__ import annotations

import dataclasses

import pytest

from magicapture_pipeline import speed_bench


@pytest.fixture
def quick_tiny(monkeypatch):
    spec = dataclasses.replace(
        speed_bench.SIZES["tiny"], resolution=64, repeats=1, warmup=0, arcface_arch="r18"
    )
    monkeypatch.setitem(speed_bench.SIZES, "tiny", spec)
    return spec


@pytest.mark.parametrize("engine", ["trainer", "harness"])
def test_measure_size_reports_every_step_figure_and_ratio(quick_tiny, engine):
    result = speed_bench.measure_size("tiny", profile_missed=False, engine=engine)
    assert result["engine"] == engine and "engine_error" not in result
    for key in (*speed_bench.STAGE_ONE_FIGURES, *speed_bench.STAGE_TWO_FIGURES):
        assert result[key] > 0, key
    for key, (numerator, denominator) in speed_bench.RATIOS.items():
        assert result[key] == pytest.approx(result[numerator] / result[denominator], rel=1e-2)
    assert result["peak_rss_mb"] > 0
    assert set(result["breakdown_s"]) >= {"unet_fwd_bwd_s", "vae_decode_fwd_bwd_s"}
    assert result["capture_layers"] and all(n.endswith("attn2") for n in result["capture_layers"])


def test_markdown_lists_sizes_figures_and_missing_reasons():
    size = {key: 1.0 for key in (*speed_bench.STAGE_TWO_FIGURES, *speed_bench.RATIOS)}
    size.update(description="d", model={"parameters_m": {}}, arcface_arch="r18", capture_layers=[])
    report = {
        "environment": {"date_utc": "now", "torch": "x", "device": "cpu", "torch_threads": 1},
        "sizes": {"tiny": size, "broken": {"error": "not measured: boom"}},
        "preprocess_images_per_s": None,
        "not_measured": {"preprocess_images_per_s": "not measured: no mediapipe"},
    }
    text = speed_bench._markdown(report)
    assert "| stage2_full_over_plain | 1 | - | <= 1.15 |" in text
    assert "not measured: no mediapipe" in text
    assert "**broken**: not measured: boom" in text
