"""What every run pays before its first node (issue 17, the suite's time): the project's settings
(its hooks) and pipeline registry import none of the heavy libraries, and a pipeline is imported
only when it is asked for, so ``kedro run --pipelines=preprocess`` loads neither torch nor
MLflow. Checked by what a fresh interpreter has in ``sys.modules``, never by a clock (speed goals
are ``make bench``'s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from kedro.config import MissingConfigException

from magicapture_pipeline.concepts import ConceptNameError
from magicapture_pipeline.hooks.concept import ConceptLockHook
from magicapture_pipeline.pipeline_registry import ProjectPipelines, register_pipelines
from magicapture_pipeline.pipelines import CUSTOMIZE_CHAIN

# Libraries of seconds each to import that the start of a run does not need.
HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "mlflow",
    "great_expectations",
    "mediapipe",
    "ray",
    "pandas",
)
SETTINGS = "magicapture_pipeline.settings"  # Kedro imports it for every command
REGISTRY = "magicapture_pipeline.pipeline_registry"
LOADED = "import json, sys; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"


def heavy_modules_after(code: str) -> list[str]:
    """The :data:`HEAVY` libraries a fresh interpreter holds after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{LOADED.format(heavy=HEAVY)}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_settings_and_registry_import_no_heavy_library():
    """The hooks and the registry (every pipeline's name) cost no torch, MLflow, GX, pandas."""
    code = f"import {SETTINGS}, {REGISTRY} as r\nnames = list(r.register_pipelines())"
    assert heavy_modules_after(code) == []


def test_one_pipeline_imports_only_what_it_runs():
    """Building ``preprocess`` imports its nodes (pandas, images), not torch or MLflow's pyfunc
    (the ``register`` and ``batch_generate`` nodes) nor the diffusion model."""
    code = f"import {REGISTRY} as r\nr.register_pipelines()['preprocess']"
    assert heavy_modules_after(code) == ["pandas"]


def test_the_registry_lists_every_pipeline_and_builds_the_main_job():
    pipelines = register_pipelines()
    assert isinstance(pipelines, ProjectPipelines)
    names = list(pipelines)
    assert set(CUSTOMIZE_CHAIN) < set(names)
    assert {"customize", "__default__", "promote", "export", "batch_generate"} <= set(names)
    assert len(pipelines) == len(names)
    main = pipelines["customize"]
    assert pipelines["__default__"] is main
    chained = {node.name for stage in CUSTOMIZE_CHAIN for node in pipelines[stage].nodes}
    assert {node.name for node in main.nodes} == chained
    assert not {node.name for node in pipelines["promote"].nodes} & chained
    with pytest.raises(KeyError):
        pipelines["no_such_pipeline"]


class _Context:
    """A context whose merged parameters are ``parameters``; reading ``.params`` (Kedro's
    validated parameters, which import every pipeline) fails the test."""

    def __init__(self, parameters: dict) -> None:
        self.config_loader = {"parameters": parameters}

    @property
    def params(self) -> dict:
        raise AssertionError("context.params validates every pipeline's nodes: not at start")


def test_the_concept_check_reads_the_merged_parameters_not_the_validated_ones():
    hook = ConceptLockHook()
    hook.after_context_created(_Context({"concept": "alice"}))
    hook.after_context_created(_Context({}))  # a project without a concept: nothing to check
    with pytest.raises(ConceptNameError, match=r"\.\./x"):
        hook.after_context_created(_Context({"concept": "../x"}))


def test_without_parameter_files_the_concept_check_falls_back_to_the_run_params():
    class NoFiles(SimpleNamespace):
        def __getitem__(self, key):
            raise MissingConfigException("no parameters")

    context = SimpleNamespace(config_loader=NoFiles(), params={"concept": "../x"})
    with pytest.raises(ConceptNameError, match=r"\.\./x"):
        ConceptLockHook().after_context_created(context)
