"""Where a run may write, clear and read: the path rules of the parameter check (issue 21 §1).

* Every folder a run writes or clears (``stage_one.checkpoint_dir``, ``stage_two.checkpoint_dir``;
  ``model.pretrained`` when the demo builds its tiny model there) resolves inside the project's
  ``data/<layer>/<concept>/`` (the tiny model: inside ``data/``), or inside the root named by
  ``MAGICAPTURE_DATA_ROOT`` when set. ``..`` that leaves it, an absolute path elsewhere, ``/`` or
  ``data`` itself are refused.
* ``model.pretrained`` that is a local path (absolute, ``./``, ``../`` or an existing folder) must
  be a diffusers folder (``model_index.json``); otherwise it must look like a hub id
  (``owner/name``).
* ``source_dir``/``reference_dir`` (user folders, read only) must exist, be folders, hold at least
  one image file and not be a symlink loop; each problem names the folder.

Pure pathlib: checked by the parameter-check hook, ``check_config`` and the batch worker before
anything is cleared or written.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DATA_ROOT_ENV = "MAGICAPTURE_DATA_ROOT"
# Checked by the dataset that reads the folders too (datasets/raw_images.py).
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif",
)
CONCEPT_FOLDERS = (
    ("stage_one", "checkpoint_dir"),
    ("stage_two", "checkpoint_dir"),
    ("benchmark", "class_images_dir"),
)
USER_FOLDERS = ("source_dir", "reference_dir")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# The one folder the project writes photos into: the demo env's sample set
# (datasets/raw_images.py ``sample_root``); a photo folder inside it is the project's, not a user's.
SAMPLE_FOLDER = Path("01_raw") / "demo"


def data_root(project: Path) -> Path:
    """The folder every run output lives under: ``$MAGICAPTURE_DATA_ROOT`` or ``<project>/data``."""
    configured = os.environ.get(DATA_ROOT_ENV)
    root = Path(configured) if configured else project / "data"
    return root.resolve()


def _resolved(project: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else project / path).resolve()


def concept_path_problem(project: Path, concept: str, value: str) -> str | None:
    """Why ``value`` is not a folder inside ``data/<layer>/<concept>/`` (None when it is)."""
    root = data_root(project)
    try:
        target = _resolved(project, value)
    except (RuntimeError, OSError) as error:  # a symlink loop on the way
        return f"cannot be resolved ({error})"
    relative = target.relative_to(root).parts if target.is_relative_to(root) else ()
    if len(relative) >= 3 and relative[1] == concept:
        return None
    return (
        f"resolves to {target}, outside {root}/<layer>/{concept}/ (a run writes and clears "
        f"only inside its concept's folders; '..' and absolute paths elsewhere are refused)"
    )


def _tiny_target_problem(project: Path, target: Path) -> str | None:
    root = data_root(project)
    if target.is_relative_to(root) and target != root:
        return None
    return (
        f"resolves to {target}: the tiny model is built (written) there, so it must lie "
        f"inside {root}/"
    )


def pretrained_problem(project: Path, model: Mapping[str, Any]) -> str | None:
    """Why ``model.pretrained`` is not a usable base model reference (None when it is)."""
    value = model.get("pretrained")
    if not isinstance(value, str) or not value:
        return None  # the typed model reports the type
    local = Path(value).is_absolute() or value.startswith((".", "~")) or ".." in value.split("/")
    target = _resolved(project, value)
    if model.get("tiny") is not None:  # the demo builds (writes) a tiny model there
        return _tiny_target_problem(project, target)
    problem = None
    if local or target.is_dir():
        if not (target / "model_index.json").is_file():
            problem = (
                f"local folder {target} is not a diffusers model (no model_index.json); give a "
                "diffusers folder or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5"
            )
    elif not _HUB_ID.match(value):
        problem = "neither a local diffusers folder nor a hub id (owner/name)"
    return problem


def _resolve_problem(path: Path) -> str | None:
    """Why ``path`` does not resolve to something that exists (a loop is named as one)."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 reports a symlink loop this way
        return "symlink_loop: the path points back to itself"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink_loop: the path points back to itself"
        return "missing_folder: no such folder; put 4-6 photos there (it is never created)"
    return None


def folder_problem(project: Path, value: Any) -> str | None:
    """Why a user photo folder cannot be read (None when it can). Never creates anything."""
    if not isinstance(value, str) or not value.strip():
        return "expected a folder path"
    path = Path(value).expanduser()
    path = path if path.is_absolute() else project / path
    if _resolve_problem(path) != "symlink_loop: the path points back to itself":
        if path.resolve().is_relative_to((data_root(project) / SAMPLE_FOLDER).resolve()):
            return None  # the project's own demo folder: the demo env fills it
    problem = _resolve_problem(path)
    if problem or not path.is_dir():
        return problem or "not_a_folder: a file, not a folder of photos"
    try:
        images = [
            p for p in path.iterdir()
            if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        ]  # fmt: skip
    except OSError as error:
        return f"unreadable_folder: {error.strerror}"
    if not images:
        return (
            f"empty_folder: no image files ({', '.join(IMAGE_SUFFIXES)}); put 4-6 photos there "
            "(user folders are never filled by the project)"
        )
    return None


def path_problems(
    parameters: Mapping[str, Any], sections: Iterable[str], project: str | Path
) -> list[str]:
    """Every path rule broken by the sections a run reads, one line each (empty when none)."""
    project = Path(project).resolve()
    sections = set(sections)
    concept = parameters.get("concept")
    problems: list[str] = []
    for section, key in CONCEPT_FOLDERS:
        raw = parameters.get(section)
        value = raw.get(key) if isinstance(raw, Mapping) and section in sections else None
        if value is None or not isinstance(value, str):
            continue
        if not isinstance(concept, str) or not concept:
            problems.append(f"params:{section}.{key} = {value!r}: no concept to place it in")
            continue
        problem = concept_path_problem(project, concept, value)
        if problem:
            problems.append(f"params:{section}.{key} = {value!r}: {problem}")
    model = parameters.get("model")
    if "model" in sections and isinstance(model, Mapping):
        problem = pretrained_problem(project, model)
        if problem:
            problems.append(f"params:model.pretrained = {model.get('pretrained')!r}: {problem}")
    for key in USER_FOLDERS:
        if key in parameters:
            problem = folder_problem(project, parameters[key])
            if problem:
                problems.append(f"{key} = {parameters[key]!r}: {problem}")
    return problems
