"""A portable reference to the base Stable Diffusion of a registered concept.

The concept's LoRA and embeddings travel with the registered model; the base model (GBs for SD
1.5) is referenced, never copied. A reference is one of:

* ``hub_id``: a Hugging Face id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), loaded through
  the local Hugging Face cache on any machine;
* ``project_path``: a folder inside the project, stored relative to the project root
  (``data/06_models/tiny_sd``) and found again under ``$MAGICAPTURE_PROJECT_ROOT`` or the working
  directory (``make serve`` sets the first);
* ``local_path``: a folder outside the project, stored as it is (this machine only; the
  registration log warns).

Loading where the base model is missing raises :class:`BaseModelMissing`, which says what was
looked for, where, and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT_ENV = "MAGICAPTURE_PROJECT_ROOT"
KINDS = ("hub_id", "project_path", "local_path")


class BaseModelMissing(FileNotFoundError):
    """The registered model's base Stable Diffusion cannot be found on this machine."""


def portable_reference(path_or_hub_id: str | Path, project_root: str | Path) -> tuple[str, str]:
    """``(reference, kind)`` for the model config: project folders become project-relative.

    Args:
        path_or_hub_id: what the ``base_model`` dataset recorded (folder or hub id).
        project_root: the Kedro project root.
    """
    text = str(path_or_hub_id)
    path = Path(text)
    root = Path(project_root).resolve()
    candidate = path if path.is_absolute() else root / path
    if candidate.is_dir():
        resolved = candidate.resolve()
        if resolved.is_relative_to(root):
            return resolved.relative_to(root).as_posix(), "project_path"
        return str(resolved), "local_path"
    return text, "hub_id"


def resolve_base_model(reference: str, kind: str, search: list[Path] | None = None) -> str:
    """The folder or hub id to load for a stored reference (see the module docstring).

    Args:
        reference: the stored reference.
        kind: one of ``KINDS``.
        search: project roots to try for a ``project_path`` (default: ``$MAGICAPTURE_PROJECT_ROOT``
            then the working directory).

    Raises:
        BaseModelMissing: naming the reference, the places looked at and the fix.
    """
    if kind not in KINDS:
        raise ValueError(f"base_model_kind {kind!r} is not one of {KINDS}")
    if kind == "hub_id":
        return reference
    if kind == "local_path":
        if Path(reference).is_dir():
            return reference
        raise BaseModelMissing(
            f"The concept's base model is the folder {reference!r} of the machine that trained "
            "it, and it is not here. Copy that folder to the same path, or re-register the "
            "concept with a hub id (model.pretrained) or a folder inside the project."
        )
    roots = search
    if roots is None:
        roots = [Path(p) for p in (os.environ.get(PROJECT_ROOT_ENV), os.getcwd()) if p]
    for root in roots:
        folder = Path(root) / reference
        if folder.is_dir():
            return str(folder.resolve())
    looked = ", ".join(str(Path(r) / reference) for r in roots) or "(nowhere)"
    raise BaseModelMissing(
        f"The concept's base model is the project folder {reference!r} (relative to the "
        f"magicapture project that trained it); not found at: {looked}. Run from that project's "
        f"root or set {PROJECT_ROOT_ENV} to it (make serve does), or re-register the concept "
        "with a hub id (model.pretrained)."
    )
