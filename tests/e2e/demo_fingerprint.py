"""The demo's exported tensors and metrics, run small, as a fingerprint a refactor must keep.

``python tests/e2e/demo_fingerprint.py --update`` runs the shrunk demo once in a temporary copy
of the project and writes ``tests/e2e/golden/`` (a digest of every exported tensor, every number
of ``metrics.json`` and every loss of both histories); ``test_demo_unchanged.py`` reads the same
run (the suite's shared ``demo_run``, see ``tests/conftest.py``) and compares. Regenerate only
for a change that is meant to change results (a fidelity fix), and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
sys.path.insert(0, str(HERE.parent))

from conftest import copy_project, run_kedro  # noqa: E402

# Few steps, but every stage, both tasks' losses, a checkpoint and a heatmap. Validation runs once,
# at each stage's last step (issue 20): it samples and scores inside training, and the export is
# still the last step's, so the recorded tensors stay bitwise those of a run without validation.
SHRINK = (
    "stage_one.max_steps=4,stage_one.checkpoint_every=2,stage_one.validation.every_n_steps=4,"
    "stage_two.max_steps=6,stage_two.checkpoint_every=3,stage_two.heatmap_every=3,"
    "stage_two.validation.every_n_steps=6,"
    "generation.num_inference_steps=2,generation.images_per_prompt=1"
)
# Tests that run the chain for something other than its result (DVC's orchestration, the SDXL
# family end to end) add this: Real-ESRGAN costs ~10 CPU s per run; the shared demo_run upscales.
NO_UPSCALE = "postprocess.super_resolution.enabled=false"
TIMING_WORDS = ("seconds", "time", "duration", "per_s", "rss", "memory")


def numbers(value, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON document by its path, timings and memory excluded."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if not any(word in key for word in TIMING_WORDS):
                out.update(numbers(item, f"{prefix}{key}."))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.update(numbers(item, f"{prefix}{index}."))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix.rstrip(".")] = float(value)
    return out


def tensor_digests(concept: Path) -> dict[str, dict[str, list]]:
    """Every exported tensor as [dtype, shape, sha256 of its bytes]: bitwise equality without
    committing the weights themselves."""
    from safetensors.torch import load_file

    return {
        path.name: {
            key: [str(t.dtype), list(t.shape),
                  hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()]
            for key, t in sorted(load_file(path).items())
        }  # fmt: skip
        for path in sorted(concept.glob("*.safetensors"))
    }


def run_shrunk_demo(project: Path):
    """``kedro run --pipelines=customize --env=demo --params=SHRINK`` in ``project`` (a copy of the
    project), tracked in the copy's own sqlite store whatever the caller's environment says, torch
    on one thread (bitwise results); the finished process.

    The suite's shared ``demo_run`` fixture is this run: the golden test, the notebook, the
    tracking hook and the stage-two tests all read it (tracking changes no tensor or metric).
    """
    keys = ("MAGICAPTURE_MLFLOW", "MLFLOW_TRACKING_URI", "OMP_NUM_THREADS")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.pop("MAGICAPTURE_MLFLOW", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # run_kedro points it at the copy's mlflow.db
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return run_kedro(
            project, "run", "--pipelines=customize", "--env=demo", f"--params={SHRINK}",
            timeout=1800,
        )  # fmt: skip
    finally:  # the caller's environment as it was
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_demo(project: Path) -> tuple[Path, dict[str, float]]:
    """The concept folder and the numbers (metrics, every loss of both histories) of a shrunk
    demo run in ``project``."""
    (concept,) = (project / "data" / "06_models").glob("*/concept")
    reporting = project / "data" / "08_reporting" / concept.parent.name
    found = numbers(json.loads((reporting / "metrics.json").read_text()))
    for name in ("stage_one_history", "stage_two_history"):  # every loss term of every step
        table = pd.read_csv(reporting / f"{name}.csv")
        for column in table.select_dtypes("number").columns:
            if not any(word in column for word in TIMING_WORDS):
                for row, value in enumerate(table[column].tolist()):
                    found[f"{name}.{column}.{row}"] = float(value)
    return concept, found


def main() -> None:
    if "--update" not in sys.argv:
        raise SystemExit("usage: python tests/e2e/demo_fingerprint.py --update")
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_project(Path(tmp) / "project")
        done = run_shrunk_demo(project)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-4000:])
        concept, metrics = read_demo(project)
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir(parents=True)
        (GOLDEN / "tensors.json").write_text(json.dumps(tensor_digests(concept), indent=1) + "\n")
        (GOLDEN / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
