"""Robust image decoding and metadata-free encoding.

Every photo a user gives passes through :func:`decode_image` exactly once: EXIF orientation is
applied, any mode (CMYK, palette, 16-bit, grayscale, alpha) becomes 8-bit RGB (alpha composited
on white), and broken or hostile files fail with an :class:`ImageDecodeError` that names the file
and the rule broken. HEIC/HEIF (iPhone photos) decode through pillow-heif's Pillow plugin, AVIF
through Pillow itself. A JPEG much larger than needed is decoded by libjpeg at 1/2, 1/4 or 1/8
scale (``max_side``), so an 8k x 8k photo never holds its full 192 MB of pixels; the
decompression-bomb guard applies to the pixels actually decoded, and Pillow's own guard stays on.
:func:`encode_png` writes pixels only, so no EXIF / GPS / text chunk ever
leaves this project with a photo.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 12-megapixel phone photo is 4000x3000; 64 MP leaves room for any camera while refusing
# decompression bombs (e.g. a PNG whose header claims 60000x60000) before any pixel is decoded.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIDE = 64
DEFAULT_MAX_SIDE = 4096

try:  # HEIC/HEIF: registers an opener with Pillow (pinned in requirements.txt)
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - the pinned environment has it
    HEIF_SUPPORTED = False


@dataclass(frozen=True)
class RawImage:
    """An undecoded input file: its id (file stem), where it lives, and its bytes.

    ``refused`` (``"<rule>: <detail>"``) marks a file the folder reader would not read (a symlink
    leaving the folder, an image format this project cannot decode): decoding it raises that
    rule, so the validation report names the file instead of it being dropped without a word.
    """

    file_id: str
    path: str
    data: bytes
    refused: str | None = None


class ImageDecodeError(ValueError):
    """A file that cannot be used as a photo; names the file, the rule broken and the detail."""

    def __init__(self, path: str | Path, rule: str, detail: str) -> None:
        self.path = str(path)
        self.rule = rule
        self.detail = detail
        super().__init__(f"{self.path}: {rule}: {detail}")


def decode_image(
    raw: RawImage | bytes,
    path: str | Path = "<bytes>",
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode ``raw`` into an upright ``(H, W, 3)`` uint8 RGB array.

    Args:
        raw: the file's bytes, or a :class:`RawImage` (its path is then used in errors).
        path: the name used in error messages when ``raw`` is plain bytes.
        min_side: smallest accepted width / height in pixels (after EXIF rotation).
        max_pixels: largest accepted width x height to decode, checked before decoding (on the
            header, or on the reduced size when the decoder scales a JPEG down).
        max_side: a JPEG whose longer side exceeds this is decoded at the smallest 1/2, 1/4 or
            1/8 scale that keeps the longer side >= ``max_side`` (bounded memory); ``None`` =
            full size.

    Raises:
        ImageDecodeError: rule ``empty_file``, ``not_an_image``, ``decompression_bomb``,
            ``too_small``, ``truncated``, or the rule a folder reader refused the file with.
    """
    if isinstance(raw, RawImage):
        path, data = raw.path, raw.data
        if raw.refused:
            rule, _, detail = raw.refused.partition(": ")
            raise ImageDecodeError(path, rule, detail or rule)
    else:
        data = raw
    if not data:
        raise ImageDecodeError(path, "empty_file", "the file has 0 bytes")
    image = _open_checked(data, path, max_pixels, max_side)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(path, "truncated", f"the image data is incomplete ({err})") from err
    image = _upright(image, path)
    width, height = image.size
    if min(width, height) < min_side:
        raise ImageDecodeError(
            path, "too_small", f"{width}x{height} px, each side must be >= {min_side} px"
        )
    return to_rgb_array(image)


def _open_checked(
    data: bytes, path: str | Path, max_pixels: int, max_side: int | None = None
) -> Image.Image:
    """Open lazily (header only) and refuse absurd sizes before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(
            path, "decompression_bomb", f"header size refused before decoding ({err})"
        ) from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(
            path, "not_an_image", "no image format recognises these bytes"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(path, "not_an_image", f"unreadable header ({err})") from err
    width, height = image.size
    if max_side and image.format == "JPEG" and max(width, height) > max_side:
        scale = max_side / max(width, height)
        image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
        if image.size != (width, height):
            width, height = image.size  # the decoder will produce only these pixels
    if width * height > max_pixels:
        raise ImageDecodeError(
            path,
            "decompression_bomb",
            f"{width}x{height} = {width * height} px to decode (from the header), "
            f"more than {max_pixels}",
        )
    return image


def _upright(image: Image.Image, path: str | Path) -> Image.Image:
    try:
        ImageOps.exif_transpose(image, in_place=True)  # no copy of an already-upright photo
        return image
    except (OSError, SyntaxError, ValueError, KeyError) as err:
        raise ImageDecodeError(path, "bad_exif", f"EXIF orientation unreadable ({err})") from err


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an 8-bit RGB array; transparency is composited on white."""
    mode = image.mode
    if mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        return _wide_gray_to_rgb(np.asarray(image))
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in {"1", "L"} and "transparency" in image.info:
        image = image.convert("LA")
    elif mode == "RGB" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _wide_gray_to_rgb(values: np.ndarray) -> np.ndarray:
    """16-bit / 32-bit / float grayscale to 8 bits, keeping the file's own scale."""
    values = values.astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if top <= 1.0 and values.min() >= 0.0 and not np.issubdtype(values.dtype, np.integer):
        scale = 255.0
    elif top <= 255.0:
        scale = 1.0
    elif top <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def to_pil(array: np.ndarray) -> Image.Image:
    """A fresh PIL image from pixels alone (RGB or L): it carries no metadata at all."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array)
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.fromarray(array)
    raise ValueError(f"expected (H, W) or (H, W, 3) pixels, got shape {array.shape}")


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes with pixels only: no EXIF, GPS, ICC or text chunks."""
    buffer = io.BytesIO()
    to_pil(array).save(buffer, format="PNG")
    return buffer.getvalue()
