"""The demo's exported weights and metrics equal the recorded fingerprint (issue 17).

A refactor keeps results: the shrunk demo (every stage, a few steps; the suite's shared
``demo_run``) must export the same tensors and the same metrics as ``tests/e2e/golden/``, which
was written by ``demo_fingerprint.py --update`` before the layout redesign. A change meant to
change results regenerates it and says why.
"""

from __future__ import annotations

import json
import math

import pytest

from e2e.demo_fingerprint import GOLDEN, read_demo, tensor_digests


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xdist_group("demo_run")
def test_demo_exports_the_recorded_weights_and_metrics(demo_run):
    project, done = demo_run  # the shrunk demo (demo_fingerprint.SHRINK), run once per session
    assert done.returncode == 0, done.stderr[-4000:]
    concept, metrics = read_demo(project)
    want = json.loads((GOLDEN / "tensors.json").read_text())
    assert want, f"no golden tensor digests in {GOLDEN}"
    got = tensor_digests(concept)
    assert sorted(got) == sorted(want)
    for name, tensors in want.items():
        assert set(got[name]) == set(tensors), name
        for key, digest in tensors.items():  # dtype, shape and sha256 of the bytes: bitwise
            assert got[name][key] == digest, (name, key)
    expected = json.loads((GOLDEN / "metrics.json").read_text())
    assert expected and set(metrics) == set(expected), set(metrics) ^ set(expected)
    for key, value in expected.items():
        assert math.isclose(metrics[key], value, rel_tol=0, abs_tol=1e-9) or (
            math.isnan(value) and math.isnan(metrics[key])
        ), (key, metrics[key], value)
