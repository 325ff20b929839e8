"""Check a run's parameters before any work (``hooks/parameter_check.py`` runs it as a hook).

Every ``kedro run`` checks all the parameter sections its pipelines read (``params:stage_two``
included when stage two is hours away) before the first node runs, against the typed models in
``config/`` (:mod:`magicapture_pipeline.config.sections`): a bad knob fails in seconds, with every
problem named at once (field, value, allowed range), and no MLflow run is started for it.

On its own, without running anything (``make check-config ENV=demo PARAMS=...``)::

    python -m magicapture_pipeline.check_config --env demo --pipelines customize \\
        --params stage_two.max_steps=-1

prints every knob the run will use, its effective value and where that value comes from
(``--params``, ``conf/<env>/<file>.yml``, ``recipe official (authors' code)``, or ``default``
followed by the default's own provenance from the field's metadata, e.g. ``default, paper:
Experiments: Training Details ...`` or ``default, ours: ...``; the same metadata
``docs/defaults.md`` is generated from), then exits 0 with ``ok`` when valid, else 1 with one
line per problem.

Kedro 1.7 can also validate node parameters typed as pydantic models; no node is typed so (nodes
take plain mappings and validate them themselves), so this hook is the one check, and its report
names every problem at once (``tests/config/test_one_parameter_check.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from magicapture_pipeline.config.recipes import field_at, official_recipe, provenance
from magicapture_pipeline.config.sections import (
    SECTIONS,
    ParameterError,
    check_run,
    effective_section,
    sections_read_by,
)


def _runtime_params(text: str | None) -> dict[str, Any]:
    """``a.b=1,c=x`` -> nested dict, typed like ``kedro run --params`` (OmegaConf dot list)."""
    from omegaconf import OmegaConf

    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise SystemExit(f"--params: {item!r} must be key=value")
    return OmegaConf.to_container(OmegaConf.from_dotlist(items)) if items else {}


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` under ``x`` -> ``{"x.a.b": 1}``; lists and scalars are leaves."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _layers(project_path: Path, env: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file, its keys as dotted leaves)`` for every parameters file, lowest layer first."""
    from magicapture_pipeline.config.loader import ENV_PARENTS

    envs = [env]
    while envs[0] in ENV_PARENTS:
        envs.insert(0, ENV_PARENTS[envs[0]])
    layers = []
    for name in ["base", *[e for e in envs if e != "base"]]:
        for path in sorted((project_path / "conf" / name).glob("parameters*.yml")):
            data = yaml.safe_load(path.read_text()) or {}
            layers.append((f"conf/{name}/{path.name}", _leaves(data, "")))
    return layers


def _set_by(key: str, leaves: Iterable[str] | Mapping[str, Any]) -> bool:
    """Whether ``key`` is one of ``leaves`` or below one; a leaf that is an empty mapping
    (``export: {}``, a section declared with no value of its own) sets no knob below it."""
    items = leaves.items() if isinstance(leaves, Mapping) else ((leaf, None) for leaf in leaves)
    return any(
        key == leaf or (key.startswith(f"{leaf}.") and not (isinstance(v, Mapping) and not v))
        for leaf, v in items
    )


def knob_sources(
    parameters: Mapping[str, Any],
    sections: Iterable[str],
    layers: list[tuple[str, dict[str, Any]]],
    runtime: Mapping[str, Any],
) -> list[tuple[str, Any, str]]:
    """``(knob, effective value, source)`` for every knob of ``sections``."""
    runtime_leaves = set(_leaves(dict(runtime), ""))
    rows = []
    for section in sections:
        if section not in parameters:
            continue
        effective = effective_section(section, parameters[section])
        recipe: set[str] = set()
        model = SECTIONS.get(section)
        if model is not None and isinstance(effective, Mapping):
            if effective.get("recipe") == "official":
                recipe = set(_leaves(official_recipe(model), section))
        for key, value in _leaves(effective, section).items():
            if _set_by(key, runtime_leaves):
                source = "--params"
            else:
                files = [name for name, leaves in layers if _set_by(key, leaves)]
                if files:
                    source = files[-1]
                elif _set_by(key, recipe):
                    source = "recipe official (authors' code)"
                else:
                    source = default_source(model, key.partition(".")[2])
            rows.append((key, value, source))
    return rows


def default_source(model: Any, key: str) -> str:
    """``default, <source>: <citation>`` of ``key`` in ``model``, read from the field's metadata."""
    field = field_at(model, key) if model is not None else None
    found = provenance(field) if field is not None else None
    return f"default, {found}" if found is not None else "default (no recorded source)"


def check_project(
    project_path: Path,
    env: str | None,
    pipeline_names: list[str],
    params: dict[str, Any],
    report: list[tuple[str, Any, str]] | None = None,
) -> list[str]:
    """Every parameter problem of ``kedro run --env=env --pipelines=... --params=...``; each knob
    the run uses, its value and its source are appended to ``report`` when given."""
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
        sections = sections_read_by(inputs)
        if report is not None:
            layers = _layers(project_path, env or "local")
            report.extend(knob_sources(parameters, sections, layers, params))
        return check_run(parameters, sections, project_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro env (default: Kedro's, 'local').")
    parser.add_argument("--pipelines", default="customize", help="Comma-separated pipelines.")
    parser.add_argument("--params", default=None, help="Runtime params, as `kedro run --params`.")
    parser.add_argument("--project-path", default=".", help="Project root (default: here).")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.pipelines.split(",") if name.strip()]
    report: list[tuple[str, Any, str]] = []
    problems = check_project(
        Path(args.project_path).resolve(), args.env, names, _runtime_params(args.params), report
    )
    width = max((len(key) for key, _, _ in report), default=0)
    for key, value, source in report:
        sys.stdout.write(f"{key:<{width}}  {value!r:<40}  {source}\n")
    where = f"env {args.env or 'local'}, pipelines {','.join(names)}"
    if problems:
        sys.stderr.write(f"{ParameterError(problems, where)}\n")
        return 1
    sys.stdout.write(f"ok: parameters valid ({where})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
