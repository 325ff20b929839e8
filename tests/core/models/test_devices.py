"""``device: auto`` / ``dtype: auto``: CUDA and float16 when present, CPU and float32 otherwise."""

from __future__ import annotations

import pytest
import torch

from magicapture_pipeline.config.generation import EvaluationConfig, GenerationConfig
from magicapture_pipeline.core.models import devices


@pytest.mark.parametrize(
    ("cuda", "device", "dtype", "expected"),
    [
        (True, "auto", "auto", ("cuda", "float16")),
        (False, "auto", "auto", ("cpu", "float32")),
        (True, "cpu", "auto", ("cpu", "float32")),
        (True, "auto", "bfloat16", ("cuda", "bfloat16")),
        (True, "cuda:1", "auto", ("cuda:1", "float16")),
    ],
)
def test_auto_resolution(monkeypatch, cuda, device, dtype, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert (devices.resolve_device(device), devices.resolve_dtype(dtype, device)) == expected


def test_missing_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        devices.resolve_device("cuda")


def test_base_settings_pick_the_gpu_when_present(monkeypatch):
    """The base env (and the configs' defaults) no longer pin CPU float32 (issue 10 §4)."""
    import yaml

    from conftest import PROJECT_ROOT

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    conf = PROJECT_ROOT / "conf/base"
    generation = GenerationConfig(**{
        k: v for k, v in yaml.safe_load((conf / "parameters_generate.yml").read_text())[
            "generation"].items() if "${" not in str(v)
    })
    evaluation = EvaluationConfig(
        **yaml.safe_load((conf / "parameters_evaluate.yml").read_text())["evaluation"]
    )
    for config in (generation, GenerationConfig()):
        assert devices.resolve_device(config.device) == "cuda"
        assert devices.resolve_dtype(config.dtype, config.device) == "float16"
    assert devices.resolve_device(evaluation.device) == "cuda"
    assert devices.resolve_device(EvaluationConfig().device) == "cuda"
