"""Helpers the nodes of several pipelines share: partitioned inputs and the base model's path.

Not a pipeline (a module, not a package): the pipeline registry skips it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np


def materialise(value: Any) -> Any:
    """The object behind a partitioned dataset's entry (its lazy loader called) or the object."""
    return value() if callable(value) else value


def inputs_from_preprocess(
    face_crops: Mapping[str, Any],
    face_masks: Mapping[str, Any],
    training_set: dict[str, Any] | None,
) -> dict[str, list[Any]]:
    """Training source photos (+ landmarks), held-out source photos, reference images and masks.

    Only the items accepted into ``training_set`` are used when it lists them (``items`` trained,
    ``held_out`` never trained on); otherwise every ``source/<id>`` and ``reference/<id>`` crop.
    """
    items = (training_set or {}).get("items") or []
    if items:
        chosen = [(item["role"], str(item["id"]), item.get("landmarks5")) for item in items]
    else:
        chosen = [(*key.split("/", 1), None) for key in sorted(face_crops) if "/" in key]
    held = [
        ("held_out", str(item["id"]), item.get("landmarks5"))
        for item in (training_set or {}).get("held_out") or []
    ]
    out: dict[str, list[Any]] = {
        "sources": [], "landmarks": [], "references": [], "masks": [],
        "heldout": [], "heldout_landmarks": [],
    }
    for role, ident, raw_landmarks in chosen + held:
        crop = face_crops.get(f"{'source' if role == 'held_out' else role}/{ident}")
        if crop is None:
            continue
        image = materialise(crop).convert("RGB")
        if role in ("source", "held_out"):
            lm = raw_landmarks
            if isinstance(lm, str):  # face_metadata keeps landmarks5 as JSON text
                lm = json.loads(lm) if lm.strip() else None
            prefix = "" if role == "source" else "heldout_"
            out["heldout" if prefix else "sources"].append(image)
            out[f"{prefix}landmarks"].append(
                np.asarray(lm, dtype=np.float32).reshape(5, 2) if lm is not None else None
            )
        elif role == "reference":
            mask = face_masks.get(f"image/reference/{ident}")
            out["references"].append(image)
            out["masks"].append(materialise(mask) if mask is not None else None)
    return out


def base_model_path(base_model: dict[str, Any] | str) -> str:
    """The folder or hub id recorded by the ``base_model`` dataset."""
    return base_model["path"] if isinstance(base_model, dict) else str(base_model)
