"""Face masks: the mesh's face oval, the detection-box fallbacks, and the latent-resolution mask.

The face mask stands in for the face parser of the paper (MagiCapture, Eq. 4-6): the
region inside the mesh's face oval (skin, brows, eyes, nose, mouth, lips), which leaves hair above
the hairline and the neck below the jaw outside. Source images use the mask as is; reference
(style) images use its complement, so a reference image without a face has an all-ones style mask;
one whose face the detector finds but the mesh cannot outline has its detection box masked.
"""

from __future__ import annotations

import cv2
import numpy as np

from magicapture_pipeline.core.faces.detection import face_oval_index

LATENT_FACTOR = 8  # SD's VAE downsamples by 8


def face_mask(
    points: np.ndarray, size: int, dilation: float = 0.0, feather: float = 0.0
) -> np.ndarray:
    """Face-region mask (uint8, 255 = face) from 478 mesh points in a ``size`` x ``size`` image.

    Args:
        points: mesh points in pixels of the image the mask is for.
        size: side of the (square) mask.
        dilation: grow (> 0) or shrink (< 0) the region by this fraction of the face size.
        feather: Gaussian blur sigma as a fraction of the face size (0 = hard edge).
    """
    polygon = points[list(face_oval_index())]
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return _grow_and_soften(mask, dilation, feather)


def ellipse_mask(
    box: tuple[float, float, float, float], size: int, dilation: float = 0.0, feather: float = 0.0
) -> np.ndarray:
    """Fallback face mask when the mesh finds nothing: the ellipse inscribed in a detection box."""
    x, y, w, h = box
    mask = np.zeros((size, size), dtype=np.uint8)
    centre = (int(round(x + w / 2.0)), int(round(y + h / 2.0)))
    axes = (max(1, int(round(w / 2.0))), max(1, int(round(h / 2.0))))
    cv2.ellipse(mask, centre, axes, 0.0, 0.0, 360.0, 255, -1, cv2.LINE_AA)
    return _grow_and_soften(mask, dilation, feather)


def box_mask(
    boxes: list[tuple[float, float, float, float]],
    size: int,
    dilation: float = 0.0,
    feather: float = 0.0,
) -> np.ndarray:
    """Mask of whole detection boxes (255 inside), for a face the mesh could not outline.

    The box, not the inscribed ellipse: on a reference image the face must stay out of the style
    region, so the cruder shape errs on the side of masking too much.
    """
    mask = np.zeros((size, size), dtype=np.uint8)
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(size, int(np.ceil(x + w))), min(size, int(np.ceil(y + h)))
        mask[y0:y1, x0:x1] = 255
    return _grow_and_soften(mask, dilation, feather)


def _grow_and_soften(mask: np.ndarray, dilation: float, feather: float) -> np.ndarray:
    if dilation == 0.0 and feather <= 0.0:
        return mask
    face_size = float(np.sqrt(max(np.count_nonzero(mask > 127), 1)))
    radius = int(round(abs(dilation) * face_size))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel) if dilation > 0 else cv2.erode(mask, kernel)
    sigma = feather * face_size
    if sigma > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return mask


def latent_mask(mask: np.ndarray, factor: int = LATENT_FACTOR) -> np.ndarray:
    """The mask at latent resolution (area-averaged, so soft at the edges)."""
    size = max(1, mask.shape[0] // factor)
    return np.ascontiguousarray(cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA))
