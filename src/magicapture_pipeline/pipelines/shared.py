"""Helpers the nodes of several pipelines share: the base model's path.

Not a pipeline (a module, not a package): the pipeline registry skips it. The preprocessed face
set is read by :class:`magicapture_pipeline.core.faces.face_set.FaceSet`.
"""

from __future__ import annotations

from typing import Any


def base_model_path(base_model: dict[str, Any] | str) -> str:
    """The folder or hub id recorded by the ``base_model`` dataset."""
    return base_model["path"] if isinstance(base_model, dict) else str(base_model)
