"""Check a run's parameters before any work: a project hook, and the same check on its own.

Every ``kedro run`` checks all the parameter sections its pipelines read (``params:stage_two``
included when stage two is hours away) before the first node runs, against the typed models in
``config/`` (:mod:`magicapture_pipeline.config.sections`): a bad knob fails in seconds, with every
problem named at once (field, value, allowed range), and no MLflow run is started for it.

On its own, without running anything (``make check-config ENV=demo PARAMS=...``)::

    python -m magicapture_pipeline.check_config --env demo --pipelines customize \\
        --params stage_two.max_steps=-1

exits 0 and prints ``ok`` when valid, else 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from magicapture_pipeline.config.sections import (
    ParameterError,
    check_sections,
    sections_read_by,
)


class ParameterCheckHook:
    """Refuses a run whose parameters break their typed models, before its first node."""

    @hook_impl(tryfirst=True)  # before the tracking hook starts an MLflow run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        sections = sections_read_by(pipeline.inputs())
        problems = check_sections(parameters or {}, sections)
        if problems:
            names = ",".join(run_params.get("pipeline_names") or ["__default__"])
            raise ParameterError(problems, f"kedro run --pipelines={names}; nothing was run")


def _runtime_params(text: str | None) -> dict[str, Any]:
    """``a.b=1,c=x`` -> nested dict, typed like ``kedro run --params`` (OmegaConf dot list)."""
    from omegaconf import OmegaConf

    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise SystemExit(f"--params: {item!r} must be key=value")
    return OmegaConf.to_container(OmegaConf.from_dotlist(items)) if items else {}


def check_project(
    project_path: Path, env: str | None, pipeline_names: list[str], params: dict[str, Any]
) -> list[str]:
    """Every parameter problem of ``kedro run --env=env --pipelines=... --params=...``."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_path)
    with KedroSession.create(project_path=project_path, env=env, runtime_params=params) as session:
        context = session.load_context()
        parameters = context.config_loader["parameters"]
        unknown = [name for name in pipeline_names if name not in pipelines]
        if unknown:
            raise SystemExit(f"unknown pipeline(s) {unknown}; known: {sorted(pipelines)}")
        inputs: set[str] = set()
        for name in pipeline_names:
            inputs |= pipelines[name].inputs()
        return check_sections(parameters, sections_read_by(inputs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro env (default: Kedro's, 'local').")
    parser.add_argument("--pipelines", default="customize", help="Comma-separated pipelines.")
    parser.add_argument("--params", default=None, help="Runtime params, as `kedro run --params`.")
    parser.add_argument("--project-path", default=".", help="Project root (default: here).")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.pipelines.split(",") if name.strip()]
    problems = check_project(
        Path(args.project_path).resolve(), args.env, names, _runtime_params(args.params)
    )
    where = f"env {args.env or 'local'}, pipelines {','.join(names)}"
    if problems:
        sys.stderr.write(f"{ParameterError(problems, where)}\n")
        return 1
    sys.stdout.write(f"ok: parameters valid ({where})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
