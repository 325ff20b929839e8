"""Square face crops and the geometry between a photo and its resized crop."""

from __future__ import annotations

import cv2
import numpy as np

from magicapture_pipeline.core.faces.detection import Detection


def square_box_around(
    box: tuple[float, float, float, float], width: int, height: int, scale: float
) -> list[int]:
    """Square ``[x0, y0, side]`` centred on ``box``, ``scale`` x its larger side, kept in the image.

    The square is shifted (not shrunk) to stay inside the image, and shrunk only when the image
    itself is smaller than the wanted side.
    """
    x, y, w, h = box
    side = int(round(min(max(w, h) * scale, width, height)))
    side = max(side, 1)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(round(min(max(cx - side / 2.0, 0.0), width - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0.0), height - side)))
    return [x0, y0, side]


def centre_square(width: int, height: int) -> list[int]:
    """The largest centred square ``[x0, y0, side]``."""
    side = min(width, height)
    return [(width - side) // 2, (height - side) // 2, side]


def crop_resize(rgb: np.ndarray, crop_box: list[int], resolution: int) -> np.ndarray:
    """Cut ``crop_box`` out of ``rgb`` and resize it to ``resolution`` x ``resolution``."""
    x0, y0, side = crop_box
    patch = rgb[y0 : y0 + side, x0 : x0 + side]
    interpolation = cv2.INTER_AREA if side >= resolution else cv2.INTER_CUBIC
    resized = cv2.resize(patch, (resolution, resolution), interpolation=interpolation)
    return np.ascontiguousarray(resized)


def box_in_crop(
    box: tuple[float, float, float, float], crop_box: list[int], resolution: int
) -> tuple[float, float, float, float]:
    """``box`` ``(x, y, w, h)`` moved from image pixels to the pixels of the resized crop."""
    x0, y0, side = crop_box
    s = resolution / side
    return ((box[0] - x0) * s, (box[1] - y0) * s, box[2] * s, box[3] * s)


def detection_in_crop(detection: Detection, crop_box: list[int], resolution: int) -> Detection:
    """``detection`` moved from image pixels to the pixels of the resized crop."""
    x0, y0, side = crop_box
    s = resolution / side
    return Detection(
        detection.score,
        box_in_crop(detection.box, crop_box, resolution),
        tuple(((x - x0) * s, (y - y0) * s) for x, y in detection.keypoints),
    )
