"""Everything about a batch that can be refused before any worker starts (issue 21 §1, §5).

* the batch id names a folder under ``data/08_reporting/batch/``: letters, digits, ``.``, ``_``,
  ``-`` (no ``/``, no ``..``), at most 64 characters;
* every concept's parameter overrides are checked against the env's configs: an unknown key (top
  level or inside a typed section), a value out of its range, a ``checkpoint_dir`` outside the
  concept's ``data/<layer>/<concept>/``, a ``model.pretrained`` that is no model, and a photo folder
  that is missing, empty or a symlink loop are all named at once, file and concept included.

The worker runs the full parameter check again before it clears anything (``batch/worker.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from magicapture_pipeline.batch.manifest import (
    Manifest,
    ManifestError,
    flatten_params,
    set_nested,
)
from magicapture_pipeline.config.merge import deep_merge
from magicapture_pipeline.config.paths import CONCEPT_FOLDERS, path_problems
from magicapture_pipeline.config.sections import SECTIONS, check_sections

BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_batch_id(batch_id: str) -> str:
    """``batch_id`` when it is a safe folder name; else :class:`ManifestError` saying the rule."""
    if not BATCH_ID.match(batch_id) or ".." in batch_id:
        raise ManifestError(
            f"--batch-id {batch_id!r}: letters, digits, '.', '_', '-' only (no '/' or '..'), "
            "at most 64 characters, starting with a letter or digit"
        )
    return batch_id


def env_parameters(project: Path, env: str) -> dict[str, Any]:
    """The env's parameters as a run without overrides would read them."""
    from kedro.config import OmegaConfigLoader

    from magicapture_pipeline.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(
        str(project / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env}
    )
    return dict(loader["parameters"])


def concept_problems(
    base: dict[str, Any], project: Path, name: str, runtime: dict[str, Any]
) -> list[str]:
    """What is wrong with one concept's runtime parameters, against the env's ``base``."""
    overrides = {k: v for k, v in runtime.items() if k not in ("concept", "source_dir",
                                                                "reference_dir")}
    flat = flatten_params(overrides)
    problems = [
        f"params.{key}: unknown parameter (no such key in the env's parameters)"
        for key in sorted(flat) if key.split(".", 1)[0] not in base
    ]  # fmt: skip
    merged = deep_merge(base, overrides)
    touched = sorted({key.split(".", 1)[0] for key in flat} & set(SECTIONS))
    problems += check_sections(merged, touched)
    # Path rules only for what the manifest sets (the env's own paths follow ${concept}).
    paths: dict[str, Any] = {"concept": name}
    for section, key in CONCEPT_FOLDERS:
        if f"{section}.{key}" in flat:
            set_nested(paths, f"{section}.{key}", flat[f"{section}.{key}"])
    if any(key.startswith("model.") for key in flat):
        paths["model"] = merged.get("model")
    for key in ("source_dir", "reference_dir"):
        if runtime.get(key):
            paths[key] = runtime[key]
    problems += path_problems(paths, [s for s, _ in CONCEPT_FOLDERS] + ["model"], project)
    return problems


def check_manifest(manifest: Manifest, source: Path, project: Path, env: str) -> None:
    """Raise :class:`ManifestError` with one line per problem of every concept, before any work."""
    base = env_parameters(project, env)
    lines = []
    for spec in manifest.concepts:
        for problem in concept_problems(base, project, spec.name, spec.runtime_params()):
            lines.append(f"{source}: concept {spec.name!r}: {problem}")
    if lines:
        raise ManifestError("\n".join(lines))
