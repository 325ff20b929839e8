"""The demo's exported weights and metrics equal the recorded fingerprint (issue 17).

A refactor keeps results: the shrunk demo (every stage, a few steps) must export the same tensors
and the same metrics as ``tests/e2e/golden/``, which was written by ``demo_fingerprint.py --update``
before the layout redesign. A change meant to change results regenerates it and says why.
"""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from e2e.demo_fingerprint import GOLDEN, run_demo


@pytest.mark.slow
@pytest.mark.integration
def test_demo_exports_the_recorded_weights_and_metrics(tmp_path):
    concept, metrics = run_demo(tmp_path)
    golden_files = sorted(p.name for p in GOLDEN.glob("*.safetensors"))
    assert golden_files, f"no golden tensors in {GOLDEN}"
    assert sorted(p.name for p in concept.glob("*.safetensors")) == golden_files
    for name in golden_files:
        want, got = load_file(GOLDEN / name), load_file(concept / name)
        assert set(got) == set(want), name
        for key, tensor in want.items():
            diff = (got[key].double() - tensor.double()).abs().max().item()
            assert got[key].shape == tensor.shape and diff == 0.0, (name, key, diff)
    expected = json.loads((GOLDEN / "metrics.json").read_text())
    assert expected and set(metrics) == set(expected), set(metrics) ^ set(expected)
    for key, value in expected.items():
        assert math.isclose(metrics[key], value, rel_tol=0, abs_tol=1e-9) or (
            math.isnan(value) and math.isnan(metrics[key])
        ), (key, metrics[key], value)
