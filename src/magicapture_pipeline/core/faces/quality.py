"""Image-quality measures preprocessing records per photo: sharpness and the perceptual hash."""

from __future__ import annotations

import cv2
import numpy as np


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grayscale image (higher = sharper).

    The 3x3 Laplacian of 8-bit grey fits int16 exactly, and its sum and sum of squares are
    exact in float64, so this equals the float64 Laplacian's ``.var()`` at ~1/8 of the cost.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    laplacian = cv2.Laplacian(gray, cv2.CV_16S)
    count = float(laplacian.size)
    mean = cv2.sumElems(laplacian)[0] / count
    return max(0.0, cv2.norm(laplacian, cv2.NORM_L2SQR) / count - mean * mean)


def phash(rgb: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> str:
    """Perceptual hash (DCT pHash) as a hex string of ``hash_size**2`` bits.

    Grayscale, area-resize to 32x32, 2-D DCT, keep the lowest 8x8 frequencies, one bit per
    coefficient: above the median of those coefficients (DC term excluded from the median).
    """
    side = hash_size * highfreq_factor
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:hash_size, :hash_size]
    median = float(np.median(low.flatten()[1:]))
    bits = (low > median).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:0{hash_size * hash_size // 4}x}"


def hamming(hash_a: str, hash_b: str) -> int:
    """Number of differing bits between two hex hashes of equal length."""
    return (int(hash_a, 16) ^ int(hash_b, 16)).bit_count()
