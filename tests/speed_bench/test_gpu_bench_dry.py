"""``scripts/gpu_bench.sh --dry`` (issue 19 §4): the one-call GPU benchmark runs here on CPU at tiny
sizes through the same script and module, with Kedro and MLflow made unimportable, so the GPU
call does not fail on a typo or an upward import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from magicapture_pipeline.speed_bench import flops as fl
from magicapture_pipeline.speed_bench import gpu_bundle

ROOT = Path(__file__).resolve().parents[2]

# imported at interpreter start (site imports sitecustomize from PYTHONPATH): kedro and mlflow
# cannot be imported, and at exit the top-level modules loaded are written down
BLOCKER = textwrap.dedent(
    """
    import atexit, importlib.machinery, json, os, sys

    class _Absent:  # the path finder, blind to kedro and mlflow (find_spec says None, as absent)
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] in ("kedro", "mlflow", "kedro_datasets"):
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

        @staticmethod
        def find_distributions(context=None):  # importlib.metadata asks the meta path too
            name = (getattr(context, "name", None) or "").lower().replace("_", "-")
            if name.split("-")[0] in ("kedro", "mlflow"):
                return iter(())
            args = () if context is None else (context,)
            return importlib.machinery.PathFinder.find_distributions(*args)

        @staticmethod
        def invalidate_caches():
            importlib.machinery.PathFinder.invalidate_caches()

    sys.meta_path[:] = [
        _Absent if f is importlib.machinery.PathFinder else f for f in sys.meta_path
    ]
    atexit.register(lambda: open(os.environ["LOADED_MODULES"], "w").write(
        json.dumps(sorted({m.split(".")[0] for m in sys.modules}))))
    """
)


# Module level: tests/test_tiers.py reads the string "kedro" inside a test function as a Kedro run.
KEDRO = frozenset(("kedro", "kedro_datasets"))
ABSENT_ON_THE_GPU_MACHINE = KEDRO | {"mlflow"}


@pytest.mark.slow
def test_dry_run_of_the_script_writes_every_figure_without_kedro_or_mlflow(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    out, loaded = tmp_path / "out", tmp_path / "loaded.json"
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(tmp_path / "site"),
           "LOADED_MODULES": str(loaded), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(
        ["bash", "scripts/gpu_bench.sh", "--dry", "--repeats", "0", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("python 3.") and " diffusers 0." in done.stdout.split("\n")[0]
    modules = set(json.loads(loaded.read_text()))
    assert "magicapture_pipeline" in modules and "diffusers" in modules  # the run really ran
    assert not modules & ABSENT_ON_THE_GPU_MACHINE
    result = json.loads((out / "bench_gpu.json").read_text())
    assert result["dry"] is True and result["device"] == "cpu"
    assert list(result["sizes"]) == ["sd15_dry", "sdxl_dry"]
    for size in result["sizes"].values():
        steps = size["steps"]
        assert list(steps) == list(fl.VARIANTS)  # every variant measured, none skipped
        for row in steps.values():
            assert row["tflops_per_s"] == pytest.approx(row["flops"] / row["seconds"] / 1e12)
            assert row["utilisation"] is None  # no card peak on CPU
        assert steps["stage2_eq8_eq7_full_step"]["flops"] > steps["stage2_eq8_step"]["flops"]
        assert (steps["stage2_eq8_eq7_two_pass_step"]["flops"]
                > steps["stage2_eq8_eq7_full_step"]["flops"])  # fmt: skip
        assert set(steps["stage2_authors_step"]) >= {"peak_estimate_bytes", "peak_bytes"}
        paper = size["customization"]["paper"]
        one = paper["stage_one_micro_steps"] * steps["stage1_step"]["seconds"]
        assert paper["seconds"]["stage_one"] == pytest.approx(one)
        assert paper["total_s"] == pytest.approx(sum(paper["seconds"].values()))
    markdown = (out / "bench_gpu.md").read_text()
    assert "## sdxl_dry (sdxl, 64 px)" in markdown and "| stage2_authors_step |" in markdown


def test_bundle_holds_what_the_gpu_machine_lacks_and_not_what_it_has():
    found = gpu_bundle.closure()
    assert {"diffusers", "pydantic", "pydantic-core", "importlib-metadata"} <= set(found)
    assert not set(found) & ({"torch", "numpy", "pillow", "safetensors", "transformers"} | KEDRO)
    import diffusers  # noqa: PLC0415

    assert found["diffusers"] == diffusers.__version__
