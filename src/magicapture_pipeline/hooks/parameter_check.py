"""The parameter check as a Kedro hook: every parameter section a run reads is validated against
its typed model, and every folder it writes, clears or reads against the path rules
(``config/paths.py``), before the first node; every problem is named at once (the same check as
``make check-config``, which runs it without running anything)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from magicapture_pipeline.config.sections import ParameterError, check_run, sections_read_by


class ParameterCheckHook:
    """Refuses a run whose parameters break their typed models, before its first node."""

    @hook_impl(tryfirst=True)  # before the tracking hook starts an MLflow run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        sections = sections_read_by(pipeline.inputs())
        project = run_params.get("project_path") or Path.cwd()
        problems = check_run(parameters or {}, sections, project)
        if problems:
            names = ",".join(run_params.get("pipeline_names") or ["__default__"])
            raise ParameterError(problems, f"kedro run --pipelines={names}; nothing was run")
