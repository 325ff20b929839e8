"""Training examples: what the trainers read, and how they are built from the training set.

Roles and tasks (paper, Method): ``source`` images show the person, ``reference`` images the style;
stage two samples three tasks, the third (``composed``) pseudo-labelled by a reference image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from magicapture_pipeline.core.faces.face_set import FaceSet, parse_landmarks5

SOURCE, REFERENCE, COMPOSED = "source", "reference", "composed"
TASKS = (SOURCE, REFERENCE, COMPOSED)
# ArcFace landmark order after a horizontal flip: the left eye/mouth become the right ones.
_FLIP_LANDMARKS = [1, 0, 2, 4, 3]


@dataclass
class TrainingExample:
    """One accepted training image, ready for the trainers.

    Attributes:
        id: the image id of the training set.
        role: ``"source"`` (the person) or ``"reference"`` (the style).
        image: ``(3, H, W)`` float in ``[-1, 1]``.
        face_mask: ``(1, h, w)`` float in ``[0, 1]`` at latent resolution (``H / 8``), 1 = face.
        landmarks5: ``(5, 2)`` ArcFace-order landmarks in image pixels, or ``None``.
    """

    id: str
    role: str
    image: Tensor
    face_mask: Tensor
    landmarks5: Tensor | None = None

    def flipped(self) -> TrainingExample:
        """The horizontally mirrored example (image, mask and landmarks)."""
        landmarks = None
        if self.landmarks5 is not None:
            width = self.image.shape[-1]
            mirrored = self.landmarks5.clone()
            mirrored[:, 0] = width - 1 - mirrored[:, 0]
            landmarks = mirrored[_FLIP_LANDMARKS]
        return TrainingExample(
            self.id, self.role, self.image.flip(-1), self.face_mask.flip(-1), landmarks
        )


@dataclass
class _Variant:
    """An (augmented) example with its cached latent distribution (mean, std) or ``None``."""

    example: TrainingExample
    latent_mean: Tensor | None = None
    latent_std: Tensor | None = None


def jitter_brightness_contrast(
    image: Tensor,
    brightness: float,
    contrast: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Brightness then contrast jitter of a ``(3, H, W)`` image in ``[-1, 1]``.

    The factors are drawn uniformly from ``[1 - b, 1 + b]`` and ``[1 - c, 1 + c]`` (what
    ``torchvision.transforms.ColorJitter(b, c)`` does, here in a fixed order): brightness scales
    the ``[0, 1]`` pixels, contrast blends them with their mean grey level; both clamp to
    ``[0, 1]``. A zero range leaves that property alone.
    """
    pixels = (image + 1.0) / 2.0
    draws = torch.rand(2, generator=generator)
    if brightness > 0:
        factor = 1.0 - brightness + 2.0 * brightness * float(draws[0])
        pixels = (pixels * factor).clamp(0.0, 1.0)
    if contrast > 0:
        factor = 1.0 - contrast + 2.0 * contrast * float(draws[1])
        grey = (0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2]).mean()
        pixels = (pixels * factor + grey * (1.0 - factor)).clamp(0.0, 1.0)
    return pixels * 2.0 - 1.0


def _landmarks(value: Any) -> Tensor | None:
    points = parse_landmarks5(value)
    return None if points is None else torch.tensor(points)


def example_from_images(
    ident: str, role: str, image: Any, latent_mask: Any, landmarks5: Any = None
) -> TrainingExample:
    """A :class:`TrainingExample` from a PIL crop and a PIL (mode L, 255 = face) latent mask."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    mask = np.asarray(latent_mask.convert("L"), dtype=np.float32) / 255.0
    return TrainingExample(
        id=str(ident),
        role=str(role),
        image=torch.from_numpy(pixels).permute(2, 0, 1).contiguous(),
        face_mask=torch.from_numpy(mask).unsqueeze(0),
        landmarks5=_landmarks(landmarks5),
    )


def examples_from_training_set(
    training_set: Mapping[str, Any],
    face_crops: Mapping[str, Any],
    face_masks: Mapping[str, Any],
) -> list[TrainingExample]:
    """The accepted items of ``training_set`` as examples (catalog contract of the preprocess
    pipeline): the crop under ``item["crop"]`` (default ``<role>/<id>``), the latent mask under
    ``item["latent_mask"]`` (default ``latent/<role>/<id>``; else the image mask ``item["mask"]`` /
    ``image/<role>/<id>`` area-downsampled x8), ``landmarks5`` in crop pixels.

    Partition values may be loaded objects or the lazy callables ``PartitionedDataset`` returns.
    """
    face_set = FaceSet.from_catalog(training_set, face_crops, face_masks)
    if not face_set.listed:
        raise ValueError("training_set lists no accepted items: nothing to train on")
    return examples_from_face_set(face_set)


def examples_from_face_set(face_set: FaceSet) -> list[TrainingExample]:
    """The accepted faces of ``face_set`` as examples: crop, latent mask, landmarks in crop pixels.

    Raises:
        KeyError: a face's crop or mask is missing from the catalog's partitions.
    """
    examples = []
    for face in face_set.items:
        image = face_set.crop(face)
        if image is None:
            raise KeyError(f"face_crops has no {face.crop_key}")
        mask = face_set.latent_mask(face)
        if mask is None:
            raise KeyError(f"face_masks has no {face.latent_mask_key} (nor {face.mask_key})")
        examples.append(example_from_images(face.id, face.role, image, mask, face.landmarks5))
    return examples
