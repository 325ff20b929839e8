"""The same seed twice: identical metrics and identical exported weights (issue 14 §3).

The whole ``customize`` chain (preprocess, both training stages, generation, post-processing,
evaluation, registration) runs twice in one project copy on CPU with the demo env, shrunk to a
few steps so the test stays small; the second run must reproduce the first exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from conftest import run_kedro

SHRINK = (
    "stage_one.max_steps=3,stage_one.checkpoint_every=0,"
    "stage_two.max_steps=3,stage_two.checkpoint_every=0,stage_two.heatmap_every=0,"
    "generation.num_inference_steps=2,generation.images_per_prompt=1"
)


def _weights(concept: Path) -> dict[str, dict]:
    return {p.name: load_file(p) for p in sorted(concept.glob("*.safetensors"))}


def _numbers(value):
    """Every number in a metrics document (timings excluded), by path."""
    out = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if any(word in key for word in ("seconds", "time", "duration")):
                continue
            for sub, number in _numbers(item).items():
                out[f"{key}.{sub}" if sub else key] = number
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for sub, number in _numbers(item).items():
                out[f"{index}.{sub}" if sub else str(index)] = number
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[""] = value
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_customize_twice_with_one_seed_is_identical(project_copy, monkeypatch):
    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = []
    for attempt in range(2):
        done = run_kedro(
            project_copy, "run", "--pipelines=customize", "--env=demo", f"--params={SHRINK}",
            timeout=1500,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        (concept,) = (project_copy / "data" / "06_models").glob("*/concept")  # one per concept
        reporting = project_copy / "data" / "08_reporting" / concept.parent.name
        runs.append(
            {
                "weights": _weights(concept),
                "metrics": json.loads((reporting / "metrics.json").read_text()),
                "per_image": pd.read_csv(reporting / "per_image_metrics.csv"),
            }
        )
        if attempt == 0:  # the second run must write them again, not find the first's
            shutil.rmtree(concept)
            (reporting / "metrics.json").unlink()

    first, second = runs
    assert first["weights"] and set(first["weights"]) == set(second["weights"])
    for name, tensors in first["weights"].items():
        assert set(tensors) == set(second["weights"][name]), name
        for key, value in tensors.items():
            assert value.equal(second["weights"][name][key]), (name, key)
    numbers = _numbers(first["metrics"])
    assert numbers, "metrics.json holds no numbers to compare"
    assert numbers == _numbers(second["metrics"])
    pd.testing.assert_frame_equal(first["per_image"], second["per_image"])
