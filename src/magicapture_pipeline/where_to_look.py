"""Where the results of a run are: ``python -m magicapture_pipeline.where_to_look --env=demo``.

``--concept=alice`` picks the concept (default: the env's ``concept``); its reports are in
``data/08_reporting/<concept>/``.

The last line of ``make demo``: the MLflow UI command, the reports the run wrote, and the registered
model with its aliases. Read-only; it never fails the build (missing pieces are reported as such).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from magicapture_pipeline.concepts import validate_concept_name
from magicapture_pipeline.tracking.uris import resolve_tracking_uri, tracking_section

REPORTS = Path("data/08_reporting")


def _params(project: Path, env: str, concept: str | None = None) -> dict[str, Any]:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    runtime = {"concept": concept} if concept else None
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime) as session:
        return dict(session.load_context().params)


def _registry_lines(tracking_uri: str, model_name: str, env: str) -> list[str]:
    from magicapture_pipeline.serving.promotion import aliases  # imports MLflow: only here

    found = aliases(tracking_uri, model_name)
    if found is None:
        return [f"    {model_name}: not registered yet"]
    lines = [
        f"    {model_name}: "
        + (", ".join(f"@{a} -> v{v}" for a, v in sorted(found.items())) or "no aliases")
    ]
    lines.append(
        f"    load it: mlflow.pyfunc.load_model('models:/{model_name}@champion')"
        if "champion" in found
        else f"    promote it: make promote ENV={env} "
        f"CONCEPT={model_name.removeprefix('magicapture-')}"
    )
    return lines


def summary(project: Path, env: str, concept: str | None = None) -> str:
    """The text printed at the end of ``make demo`` (for ``concept``, default the env's)."""
    params = _params(project, env, concept)
    concept = validate_concept_name(params.get("concept"))
    reports_dir = REPORTS / concept
    tracking = tracking_section(params)
    registry = params.get("registry") or {}
    registry = registry.model_dump() if hasattr(registry, "model_dump") else registry
    uri = resolve_tracking_uri(project, tracking.get("tracking_uri"))
    lines = [
        "",
        "Where to look",
        f"  MLflow UI:   make ui   -> http://127.0.0.1:5000  (store: {uri})",
        f"  concept:     {concept}",
        f"  experiment:  {tracking.get('experiment_name', '?')}",
        "  reports:",
    ]
    reports = sorted((project / reports_dir).glob("*")) if (project / reports_dir).is_dir() else []
    lines += [
        f"    {p.relative_to(project)}{'/' if p.is_dir() else ''}"
        for p in reports
        if not p.name.startswith(".")
    ] or ["    (none yet)"]
    metrics_file = project / reports_dir / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        lines.append(f"  metrics:     {numbers}")
    lines += ["  registered model:"]
    try:
        lines += _registry_lines(uri, registry.get("model_name", "?"), env)
    except Exception as error:  # noqa: BLE001 - the summary must not fail
        lines.append(f"  (registry unreadable: {error})")
    lines += [
        "  pipelines:   kedro viz run --no-browser --host 127.0.0.1   (or `make viz` for build/)",
        "  notebook:    notebooks/inspect_last_run.ipynb",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the summary for ``--env`` (default demo) of the project in the working directory."""
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.where_to_look")
    parser.add_argument("--env", default="demo")
    parser.add_argument("--concept", default=None, help="the concept (default: the env's)")
    parser.add_argument("--project", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    sys.stdout.write(summary(args.project.resolve(), args.env, args.concept) + "\n")


if __name__ == "__main__":
    main()
