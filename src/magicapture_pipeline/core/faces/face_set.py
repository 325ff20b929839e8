"""The preprocessed face set, read once from the catalog contract of the ``preprocess`` pipeline.

The contract (written by :func:`training_set_contract`): ``training_set`` lists the accepted
``items`` (trained on) and the ``held_out`` source photos (never trained on), each with its
``id``, ``role`` (``"source"`` or ``"reference"``), partition keys (``crop`` ``<role>/<id>`` in
``face_crops``; ``mask`` ``image/<role>/<id>`` and ``latent_mask`` ``latent/<role>/<id>`` in
``face_masks``) and ``landmarks5`` in crop pixels; ``resolution`` is the crop side. Training
(:mod:`core.training.examples`) and evaluation read the set through :class:`FaceSet` only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from magicapture_pipeline.config.preprocess import PreprocessConfig

SOURCE, REFERENCE = "source", "reference"
MASK_CONVENTION = (
    "masks are the face region (255 = face); source images train on the face mask, reference "
    "images on its complement (all-ones when no face; a face the mesh cannot outline has its "
    "detection box masked)"
)


def materialise(value: Any) -> Any:
    """The object behind a partitioned dataset's entry (its lazy loader called) or the object."""
    return value() if callable(value) else value


def parse_landmarks5(value: Any) -> np.ndarray | None:
    """``landmarks5`` as written to the catalog (list, JSON text, empty, NaN) as ``(5, 2)`` float32.

    ``face_metadata`` keeps the landmarks as JSON text; a row without them is ``None``, an empty
    string or (read back by pandas) NaN.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else None
    return None if value is None else np.asarray(value, dtype=np.float32).reshape(5, 2)


@dataclass(frozen=True)
class Face:
    """One preprocessed image of the set: its id, role, partition keys and 5 landmarks.

    Attributes:
        id: the image id.
        role: ``"source"`` (the person) or ``"reference"`` (the style).
        crop_key: key of the square crop in ``face_crops``.
        mask_key: key of the face mask at crop resolution in ``face_masks``.
        latent_mask_key: key of the face mask at latent resolution in ``face_masks``.
        landmarks5: ``(5, 2)`` ArcFace-order landmarks in crop pixels, or ``None``.
    """

    id: str
    role: str
    crop_key: str
    mask_key: str
    latent_mask_key: str
    landmarks5: np.ndarray | None = None

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Face:
        """A ``training_set`` item (its keys default to ``<role>/<id>`` and the mask prefixes)."""
        role, ident = str(item["role"]), str(item["id"])
        return cls(
            id=ident,
            role=role,
            crop_key=str(item.get("crop") or f"{role}/{ident}"),
            mask_key=str(item.get("mask") or f"image/{role}/{ident}"),
            latent_mask_key=str(item.get("latent_mask") or f"latent/{role}/{ident}"),
            landmarks5=parse_landmarks5(item.get("landmarks5")),
        )


@dataclass(frozen=True)
class FaceSet:
    """The accepted faces (``items``), the held-out source photos and their pictures.

    ``crops`` and ``masks`` are the ``face_crops`` / ``face_masks`` partitions as the catalog
    gives them (loaded images or lazy loaders): a picture is loaded when it is read.
    ``listed`` is False when there was no training set to read, and ``items`` then holds every
    ``<role>/<id>`` crop, without landmarks (evaluation of an unvalidated set).
    """

    items: tuple[Face, ...]
    held_out: tuple[Face, ...]
    crops: Mapping[str, Any]
    masks: Mapping[str, Any]
    resolution: int | None = None
    listed: bool = True

    @classmethod
    def from_catalog(
        cls,
        training_set: Mapping[str, Any] | None,
        face_crops: Mapping[str, Any],
        face_masks: Mapping[str, Any],
    ) -> FaceSet:
        """The set the ``training_set``, ``face_crops`` and ``face_masks`` datasets hold."""
        contract = training_set if isinstance(training_set, Mapping) else {}
        listed = contract.get("items") or []
        if listed:
            items = tuple(Face.from_item(item) for item in listed)
        else:
            items = tuple(
                Face.from_item({"role": role, "id": ident})
                for role, ident in (key.split("/", 1) for key in sorted(face_crops) if "/" in key)
            )
        return cls(
            items=items,
            held_out=tuple(
                Face.from_item({"role": SOURCE, **item})
                for item in contract.get("held_out") or []
            ),
            crops=face_crops,
            masks=face_masks,
            resolution=contract.get("resolution"),
            listed=bool(listed),
        )

    def of_role(self, role: str) -> list[Face]:
        """The accepted faces of one role, in the set's order."""
        return [face for face in self.items if face.role == role]

    def crop(self, face: Face) -> Any | None:
        """The face's crop (a PIL image), or ``None`` when ``face_crops`` lacks it."""
        value = self.crops.get(face.crop_key)
        return None if value is None else materialise(value)

    def mask(self, face: Face) -> Any | None:
        """The face's mask at crop resolution (PIL, mode L, 255 = face), or ``None``."""
        value = self.masks.get(face.mask_key)
        return None if value is None else materialise(value)

    def latent_mask(self, face: Face) -> Any | None:
        """The face's mask at latent resolution (PIL, mode L, 255 = face), or ``None``.

        Without a stored latent mask, the crop-resolution mask area-downsampled x8.
        """
        if face.latent_mask_key in self.masks:
            return materialise(self.masks[face.latent_mask_key])
        full = self.mask(face)
        if full is None:
            return None
        from PIL import Image

        full = full.convert("L")
        size = (max(full.width // 8, 1), max(full.height // 8, 1))
        return full.resize(size, Image.Resampling.BOX)


@dataclass
class EvaluationInputs:
    """What evaluation compares generated images with, loaded (RGB crops, landmarks, masks).

    ``sources`` / ``landmarks`` are the accepted source photos, ``heldout`` /
    ``heldout_landmarks`` the held-out ones, ``references`` / ``masks`` the reference images
    and their face masks (``None`` where a mask is missing). Faces whose crop is missing are
    left out.
    """

    sources: list[Any]
    landmarks: list[np.ndarray | None]
    references: list[Any]
    masks: list[Any]
    heldout: list[Any]
    heldout_landmarks: list[np.ndarray | None]

    @classmethod
    def from_face_set(cls, face_set: FaceSet) -> EvaluationInputs:
        """The set's pictures loaded once, in the set's order."""
        out = cls([], [], [], [], [], [])
        for face in face_set.items:
            crop = face_set.crop(face)
            if crop is None:
                continue
            if face.role == SOURCE:
                out.sources.append(crop.convert("RGB"))
                out.landmarks.append(face.landmarks5)
            elif face.role == REFERENCE:
                out.references.append(crop.convert("RGB"))
                out.masks.append(face_set.mask(face))
        for face in face_set.held_out:
            crop = face_set.crop(face)
            if crop is not None:
                out.heldout.append(crop.convert("RGB"))
                out.heldout_landmarks.append(face.landmarks5)
        return out


def training_set_contract(
    face_metadata: pd.DataFrame, config: PreprocessConfig
) -> dict[str, Any]:
    """The ``training_set`` a validated ``face_metadata`` table gives (the contract above).

    Args:
        face_metadata: the ``face_metadata`` table (one row per file).
        config: the ``preprocess`` settings (resolution, held-out rule).

    Returns:
        ``{"resolution", "latent_resolution", "mask_convention", "items": [...],
        "held_out": [...], "held_out_rule"}``: training reads ``items`` only; ``held_out``
        source photos (split off here, before any training) are for the held-out identity score.
    """
    from magicapture_pipeline.core.faces.validation import split_heldout_sources

    resolution = config.resolution
    everything = [
        {
            "id": str(row.id),
            "role": row.role,
            "crop": f"{row.role}/{row.id}",
            "mask": f"image/{row.role}/{row.id}",
            "latent_mask": f"latent/{row.role}/{row.id}",
            "landmarks5": json.loads(row.landmarks5) if isinstance(row.landmarks5, str) else None,
        }
        for row in face_metadata.itertuples()
    ]
    sources = [item["id"] for item in everything if item["role"] == SOURCE]
    _, heldout_ids = split_heldout_sources(
        sources, config.heldout_sources, config.heldout_min_sources
    )
    held = set(heldout_ids)
    items = [i for i in everything if not (i["role"] == SOURCE and i["id"] in held)]
    return {
        "resolution": resolution,
        "latent_resolution": resolution // 8,
        "mask_convention": MASK_CONVENTION,
        "items": items,
        "held_out": [i for i in everything if i["role"] == SOURCE and i["id"] in held],
        "held_out_rule": f"the last {config.heldout_sources} source photo(s) in id order when "
        f"at least {config.heldout_min_sources} are accepted; never trained on",
    }
