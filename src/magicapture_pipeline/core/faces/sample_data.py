"""Demo photos built from public-domain images that ship inside installed packages.

* Source set (the person to learn): distinct crop / light / pose variants of scikit-image's
  ``astronaut`` (Eileen Collins, NASA photograph, public domain).
* Reference set (the style to learn): another subject, Grace Hopper (matplotlib's sample
  ``grace_hopper.jpg``, US Navy photograph, public domain), plus CC0 / public-domain scenes from
  scikit-image, all rendered in one recognisable style: an OpenCV "ink and wash" cartoon
  (edge-preserving smoothing, colour quantisation, dark ink edges, warm paper tint).

Nothing here is committed to git: the images are rebuilt deterministically from the packages, and
a manifest records each file's origin, licence and transform.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from magicapture_pipeline.core.faces.images import encode_png

MANIFEST_NAME = "MANIFEST.json"
ROLES = ("source", "reference")


@dataclass(frozen=True)
class SampleImage:
    """One demo image: file name, role, pixels (RGB uint8) and its provenance record."""

    file_name: str
    role: str
    pixels: np.ndarray
    provenance: dict[str, str]


@dataclass(frozen=True)
class _Origin:
    loader: Callable[[], np.ndarray]
    origin: str
    subject: str
    licence: str


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return np.ascontiguousarray(getattr(data, name)())

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


ASTRONAUT = _Origin(
    _skimage("astronaut"),
    "scikit-image skimage.data.astronaut() (NASA Great Images, https://flic.kr/p/r9qvLn)",
    "Eileen Collins, NASA astronaut",
    "public domain (NASA photograph; 'No known copyright restrictions, released into the "
    "public domain' - scikit-image docs)",
)
GRACE_HOPPER = _Origin(
    _grace_hopper,
    "matplotlib cbook.get_sample_data('grace_hopper.jpg')",
    "Rear Admiral Grace Hopper",
    "public domain (official US Navy photograph)",
)
SCENES = {
    "chelsea": _Origin(_skimage("chelsea"), "scikit-image skimage.data.chelsea()", "a cat",
                       "CC0 (photographer Stefan van der Walt)"),
    "coffee": _Origin(_skimage("coffee"), "scikit-image skimage.data.coffee()", "a cup of coffee",
                      "CC0 (photographer Rachel Michetti)"),
    "rocket": _Origin(_skimage("rocket"), "scikit-image skimage.data.rocket()",
                      "Falcon 9 launch of DSCOVR",
                      "public domain (released by SpaceX)"),
    "camera": _Origin(_skimage("camera"), "scikit-image skimage.data.camera()",
                      "a man with a camera", "CC0 (photographer Lav Varshney)"),
}


# --- source variants: (name, description, function of the 512x512 astronaut) ----------------

def _gamma(rgb: np.ndarray, gamma: float) -> np.ndarray:
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    return cv2.LUT(rgb, table)


def _gain(rgb: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * np.array(gains, np.float32), 0, 255).astype(np.uint8)


def _rotate(rgb: np.ndarray, degrees: float, centre: tuple[float, float]) -> np.ndarray:
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    height, width = rgb.shape[:2]
    return cv2.warpAffine(rgb, matrix, (width, height), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT101)


_FACE_CENTRE = (226.0, 120.0)  # the astronaut's face centre in the 512x512 original

SOURCE_VARIANTS: tuple[tuple[str, str, Callable[[np.ndarray], np.ndarray]], ...] = (
    ("portrait", "crop x 32:480, y 0:448 (448x448)", lambda a: a[0:448, 32:480]),
    ("mirrored_bright", "horizontal flip, gamma 0.75 (brighter), full 512x512",
     lambda a: _gamma(a[:, ::-1], 0.75)),
    ("close_up_dim", "tight crop x 90:390, y 0:300 (300x300), brightness x0.8",
     lambda a: _gain(a[0:300, 90:390], (0.8, 0.8, 0.8))),
    ("tilted_warm", "rotate +9 deg about the face, crop x 0:420, y 20:440, warm tint",
     lambda a: _gain(_rotate(a, 9.0, _FACE_CENTRE)[20:440, 0:420], (1.12, 1.0, 0.82))),
    ("mirrored_tilted_dark", "flip, rotate -7 deg, crop x 40:440, y 10:410, gamma 1.3 (darker)",
     lambda a: _gamma(_rotate(a[:, ::-1], -7.0, (512 - _FACE_CENTRE[0], _FACE_CENTRE[1]))
                      [10:410, 40:440], 1.3)),
    ("cool_offset", "crop x 0:400, y 30:430 (face off-centre), cool tint",
     lambda a: _gain(a[30:430, 0:400], (0.85, 0.97, 1.15))),
)


# --- reference style ---------------------------------------------------------------------------

STYLE_NAME = "ink-and-wash cartoon"
STYLE_DESCRIPTION = (
    "OpenCV: resize to 512 px on the long side, cv2.edgePreservingFilter (RECURS, sigma_s 60, "
    "sigma_r 0.4), colour quantisation to 6 levels per channel, dark ink edges from an adaptive "
    "threshold of the median-blurred gray image, warm paper tint"
)


def stylise(rgb: np.ndarray) -> np.ndarray:
    """The one reference style: flat colours, ink outlines, warm paper tone."""
    height, width = rgb.shape[:2]
    scale = 512.0 / max(height, width)
    image = cv2.resize(rgb, (round(width * scale), round(height * scale)),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    smooth = cv2.edgePreservingFilter(bgr, flags=cv2.RECURS_FILTER, sigma_s=60, sigma_r=0.4)
    levels = 6
    step = 256 // levels
    flat = (smooth // step) * step + step // 2
    gray = cv2.medianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 5)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    inked = cv2.bitwise_and(flat.astype(np.uint8), flat.astype(np.uint8), mask=edges)
    paper = np.array([205, 230, 250], np.float32)  # BGR warm paper
    toned = 0.8 * inked.astype(np.float32) + 0.2 * paper
    return cv2.cvtColor(np.clip(toned, 0, 255).astype(np.uint8), cv2.COLOR_BGR2RGB)


def _reference_subjects() -> list[tuple[str, str, _Origin, Callable[[np.ndarray], np.ndarray]]]:
    subjects: list[tuple[str, str, _Origin, Callable[[np.ndarray], np.ndarray]]] = []
    try:
        _grace_hopper()
        subjects += [
            ("hopper_portrait", "full photograph", GRACE_HOPPER, lambda a: a),
            ("hopper_mirrored_close", "horizontal flip, crop of the upper 70 %",
             GRACE_HOPPER, lambda a: a[: int(a.shape[0] * 0.7), ::-1]),
        ]
    except (ImportError, OSError, ValueError):
        pass  # matplotlib's sample data missing: scenes only
    for name, origin in SCENES.items():
        subjects.append((name, "full photograph", origin, lambda a: a))
    return subjects


def build_sample_set(role: str, count: int) -> list[SampleImage]:
    """The first ``count`` demo images of ``role`` ("source" or "reference"), deterministic."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    images = []
    if role == "source":
        if not 1 <= count <= len(SOURCE_VARIANTS):
            raise ValueError(f"source count must be 1..{len(SOURCE_VARIANTS)}, got {count}")
        original = ASTRONAUT.loader()
        for index, (name, transform, func) in enumerate(SOURCE_VARIANTS[:count], start=1):
            pixels = np.ascontiguousarray(func(original))
            images.append(_sample(f"astronaut_{index:02d}_{name}.png", role, pixels, ASTRONAUT,
                                  transform))
        return images
    subjects = _reference_subjects()
    if not 1 <= count <= len(subjects):
        raise ValueError(f"reference count must be 1..{len(subjects)}, got {count}")
    for index, (name, transform, origin, func) in enumerate(subjects[:count], start=1):
        pixels = stylise(np.ascontiguousarray(func(origin.loader())))
        images.append(_sample(f"style_{index:02d}_{name}.png", role, pixels, origin,
                              f"{transform}; style '{STYLE_NAME}': {STYLE_DESCRIPTION}"))
    return images


def _sample(file_name: str, role: str, pixels: np.ndarray, origin: _Origin,
            transform: str) -> SampleImage:
    return SampleImage(
        file_name=file_name,
        role=role,
        pixels=pixels,
        provenance={
            "file": f"{role}/{file_name}",
            "role": role,
            "origin": origin.origin,
            "subject": origin.subject,
            "licence": origin.licence,
            "transform": transform,
            "width": str(pixels.shape[1]),
            "height": str(pixels.shape[0]),
        },
    )


def manifest(images: list[SampleImage]) -> dict[str, Any]:
    """The provenance manifest of a demo set (JSON-serialisable)."""
    return {
        "description": "MagiCapture demo photos, rebuilt from public-domain images shipped in "
        "installed packages; nothing here is committed to git.",
        "style": {"name": STYLE_NAME, "recipe": STYLE_DESCRIPTION},
        "files": [image.provenance for image in images],
    }


def write_sample_set(folder: str | Path, role: str, count: int) -> dict[str, Any]:
    """Write the demo images of ``role`` as PNG into ``folder`` plus ``MANIFEST.json``.

    Existing files with the same names are replaced (the content is deterministic).
    Returns the manifest.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = build_sample_set(role, count)
    for image in images:
        (folder / image.file_name).write_bytes(encode_png(image.pixels))
    record = manifest(images)
    (folder / MANIFEST_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record
