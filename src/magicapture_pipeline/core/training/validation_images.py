"""The validation images inside a checkpoint, so that a resumed stage still has those of the
steps validated before the interruption (issue 20).

A checkpoint holds every image its validator produced so far as
``validation_images/step_<step, 6 digits>/<name>.png`` (PNG: lossless, the pixels read back are
the pixels sampled). They are listed in the checkpoint's manifest like every other file, so a
truncated or changed image makes the checkpoint unusable, not silently different. An image of an
earlier step that the previous checkpoint already holds byte for byte is hard-linked from it
instead of written again (ours: without that, each checkpoint would store every earlier
validation again; keep-last-K deletes a folder, and a hard link keeps the file for the other).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

IMAGES_DIR = "validation_images"
STEP_PREFIX = "step_"  # image partitions and checkpoint folders: step_<6 digits>/<name>
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_RELATIVE = re.compile(rf"{IMAGES_DIR}/{STEP_PREFIX}(\d+)/({_NAME.pattern})\.png")


def relative_path(step: int, name: str) -> str:
    """``validation_images/step_<n>/<name>.png`` inside a checkpoint.

    Raises:
        ValueError: ``name`` is not a plain file name (letters, digits, ``_ . + -``).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"validation image name {name!r} of step {step}: use letters, digits and _ . + - only"
        )
    return f"{IMAGES_DIR}/{STEP_PREFIX}{int(step):06d}/{name}.png"


def _png(image: Any, where: str) -> bytes:
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(
            f"validation image {where} is a {type(image).__name__}, not a PIL image: a "
            "checkpoint stores the scorer's images as PNG"
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(
    folder: Path, images: Mapping[int, Mapping[str, Any]], previous: Path | None = None
) -> list[str]:
    """Write ``{step: {name: PIL image}}`` under ``folder``; returns the relative paths.

    A file that ``previous`` (the checkpoint saved before) holds with the same bytes is
    hard-linked from there; where linking fails (another filesystem) it is written.
    """
    written = []
    for step, named in sorted(images.items()):
        for name, image in sorted(named.items()):
            relative = relative_path(step, name)
            data = _png(image, relative)
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = None if previous is None else previous / relative
            if source is not None and source.is_file() and source.read_bytes() == data:
                try:
                    os.link(source, target)
                except OSError:
                    target.write_bytes(data)
            else:
                target.write_bytes(data)
            written.append(relative)
    return written


def read_images(folder: Path, relatives: Iterable[str]) -> dict[int, dict[str, Any]]:
    """``{step: {name: PIL image}}`` from the ``validation_images/...`` paths among
    ``relatives`` (the checkpoint's manifest, already checked); other paths are ignored."""
    from PIL import Image

    out: dict[int, dict[str, Any]] = {}
    for relative in sorted(relatives):
        found = _RELATIVE.fullmatch(relative)
        if found is None:
            continue
        with Image.open(folder / relative) as image:
            image.load()
            out.setdefault(int(found.group(1)), {})[found.group(2)] = image.copy()
    return out
