"""The DreamBooth-LoRA row's prior preservation through the benchmark node (issue 18 §2): class
images generated once under params:benchmark.class_images_dir and reused by the second run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.core.generation import class_images as class_images_module
from magicapture_pipeline.core.models.builders import build_tiny_sd
from magicapture_pipeline.pipelines.benchmark.nodes import run_benchmark

SIZE = 64


def _inputs():
    rng = np.random.default_rng(0)
    crops = {
        "source/s": Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), np.uint8)),
        "reference/r": Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), np.uint8)),
    }
    face = np.zeros((SIZE // 8, SIZE // 8), np.uint8)
    face[1:4, 2:6] = 255
    masks = {
        "latent/source/s": Image.fromarray(face),
        "latent/reference/r": Image.fromarray(face[::-1].copy()),
        "image/reference/r": Image.fromarray(face[::-1].copy()).resize((SIZE, SIZE)),
    }
    training_set = {"items": [{"id": "s", "role": "source"}, {"id": "r", "role": "reference"}]}
    return training_set, crops, masks


def _run(base: Path, folder: Path):
    cpu = {"mixed_precision": "no", "device": "cpu", "gradient_accumulation_steps": 1}
    row = {
        "name": "DreamBooth-LoRA",
        "method": "dreambooth_lora",
        "stage_two": {
            "embedding_learning_rate": 0.0,
            "tokens": {"person_init": "sks"},
            "task_weights": [1.0, 1.0, 0.0],
            "attention": {"enabled": False},
            "identity": {"mode": "off"},
        },
        "prior_preservation": {"num_class_images": 100, "prior_loss_weight": 1.0},
    }
    return run_benchmark(
        *_inputs(),
        {"path": str(base)},
        {**cpu},
        {**cpu, "attention": {"resolution": 8}},
        {"resolution": SIZE, "images_per_prompt": 1, "num_inference_steps": 2, "seed": 0,
         "device": "cpu", "dtype": "float32"},
        {"super_resolution": {"enabled": False}},
        {"clip_model": None},
        {"variants": [row], "max_steps": 1, "num_class_images": 2,
         "class_images_dir": str(folder)},
    )


@pytest.mark.slow
def test_second_benchmark_run_reuses_the_class_images(tmp_path: Path, monkeypatch):
    """First run: 2 class images (the demo cap over the row's 100) generated into the concept's
    folder, the row trained with them and scored. Second run: the same images reused, nothing
    generated (generation patched to fail). Break caught: ``class_images`` ignoring the cache
    (always regenerating)."""
    base = build_tiny_sd(tmp_path / "sd", TinyModelConfig(sample_size=SIZE))
    folder = tmp_path / "data" / "05_model_input" / "c" / "class_images"
    report, table, _, _ = _run(base, folder)
    entry = report["variants"][0]
    assert entry["status"] == "scored", entry
    assert entry["class_images"]["generated"] is True
    assert entry["class_images"]["count"] == 2
    assert entry["class_images"]["resolution"] == SIZE
    assert entry["class_images"]["prior_loss_weight"] == 1.0
    files = sorted(folder.glob("*/class_*.png"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]

    def refuse(*args, **kwargs):
        raise AssertionError("class images generated again although cached")

    monkeypatch.setattr(class_images_module, "generate_class_images", refuse)
    report, _, _, _ = _run(base, folder)
    entry = report["variants"][0]
    assert entry["status"] == "scored", entry
    assert entry["class_images"]["generated"] is False
    assert [f.stat().st_mtime_ns for f in sorted(folder.glob("*/class_*.png"))] == stamps


def test_shipped_dreambooth_row_preserves_the_prior_and_names_what_differs():
    """conf/base: the DreamBooth row trains with prior preservation (class prompt "a photo of a
    person", diffusers' 100 class images, weight 1.0); only it does; its settings_source names
    what still differs from the paper; the demo caps the count to a handful."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    from magicapture_pipeline.config.benchmark import BenchmarkConfig

    base = yaml.safe_load((root / "conf/base/parameters_benchmark.yml").read_text())["benchmark"]
    config = BenchmarkConfig(**base)
    rows = {v.name: v for v in config.variants}
    prior = rows["DreamBooth-LoRA"].prior_preservation
    assert prior is not None
    assert (prior.class_prompt, prior.num_class_images, prior.prior_loss_weight) == (
        "a photo of a person", 100, 1.0)
    assert [v.name for v in config.variants if v.prior_preservation] == ["DreamBooth-LoRA"]
    source = rows["DreamBooth-LoRA"].settings_source
    assert "rank-4 LoRA instead of a full" in source and "batch 1" in source
    assert "NO prior preservation" not in source
    assert config.class_images_dir == "data/05_model_input/${concept}/class_images"
    demo = yaml.safe_load((root / "conf/demo/parameters_benchmark.yml").read_text())["benchmark"]
    assert demo["num_class_images"] == 2


def test_class_images_dir_outside_the_concept_is_refused(tmp_path: Path):
    """The cache folder is written, so it must lie in data/<layer>/<concept>/ like the
    checkpoint folders. Break caught: ("benchmark", "class_images_dir") left out of
    config.paths.CONCEPT_FOLDERS."""
    from magicapture_pipeline.config.paths import path_problems

    inside = {"concept": "c", "benchmark": {"class_images_dir": "data/05_model_input/c/class"}}
    outside = {"concept": "c", "benchmark": {"class_images_dir": "../elsewhere"}}
    assert path_problems(inside, ["benchmark"], tmp_path) == []
    problems = path_problems(outside, ["benchmark"], tmp_path)
    assert len(problems) == 1 and "params:benchmark.class_images_dir" in problems[0]
    assert "outside" in problems[0]
