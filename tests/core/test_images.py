"""Robust decoding: every bad input named with file and rule; every mode becomes 8-bit RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from magicapture_pipeline.core.images import (
    ImageDecodeError,
    RawImage,
    decode_image,
    encode_png,
    to_pil,
)

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _gradient(width: int = 96, height: int = 80) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` with a token of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _truncated_jpeg() -> bytes:
    data = _save(_gradient(200, 160), "JPEG", quality=90)
    return data[: len(data) // 2]


def _exif_with_gps() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "TestCamera"  # Make
    exif[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    return exif


BAD_INPUTS = [
    ("empty.jpg", lambda: b"", "empty_file"),
    ("notes.jpg", lambda: b"this is a text file, not a photo\n" * 4, "not_an_image"),
    ("half.jpg", _truncated_jpeg, "truncated"),
    ("tiny.png", lambda: _save(_gradient(32, 32), "PNG"), "too_small"),
    ("bomb.png", lambda: _png_header_only(60000, 60000), "decompression_bomb"),
    # under Pillow's own limit (89 MP) but over ours (64 MP): our header check must catch it
    ("big.png", lambda: _png_header_only(9000, 9000), "decompression_bomb"),
]


@pytest.mark.parametrize(("name", "make", "rule"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_file_and_rule(name, make, rule):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(RawImage("x", f"/photos/{name}", make()))
    assert caught.value.rule == rule
    assert caught.value.path == f"/photos/{name}"
    assert name in str(caught.value) and rule in str(caught.value)


def _cmyk() -> bytes:
    return _save(Image.new("CMYK", (80, 80), (0, 255, 255, 0)), "JPEG", quality=95)  # red


def _gray16() -> bytes:
    values = np.full((80, 80), 65535, dtype=np.uint16)
    values[:, :40] = 0
    return _save(Image.fromarray(values), "PNG")


def _rgba_half_transparent() -> bytes:
    pixels = np.zeros((80, 80, 4), dtype=np.uint8)
    pixels[..., 0] = 255  # red
    pixels[:, :40, 3] = 0  # left half fully transparent -> white
    pixels[:, 40:, 3] = 255
    return _save(Image.fromarray(pixels), "PNG")


def _gray8() -> bytes:
    return _save(Image.new("L", (80, 80), 100), "PNG")


def _palette_transparent() -> bytes:
    image = Image.new("P", (80, 80), 0)
    image.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    image.paste(1, (0, 0, 40, 80))  # left half = index 1, made transparent
    return _save(image, "PNG", transparency=1)


def _la() -> bytes:
    return _save(Image.new("LA", (80, 80), (0, 0)), "PNG")  # black, fully transparent


# (name, bytes, pixel (y, x) to check, expected RGB, tolerance)
MODES = [
    ("cmyk.jpg", _cmyk, (40, 40), (255, 0, 0), 40),
    ("gray16.png", _gray16, (40, 60), (255, 255, 255), 0),
    ("gray16_dark.png", _gray16, (40, 10), (0, 0, 0), 0),
    ("rgba.png", _rgba_half_transparent, (40, 10), (255, 255, 255), 0),
    ("rgba_opaque.png", _rgba_half_transparent, (40, 60), (255, 0, 0), 0),
    ("gray.png", _gray8, (10, 10), (100, 100, 100), 0),
    ("palette.png", _palette_transparent, (40, 10), (255, 255, 255), 0),
    ("palette_opaque.png", _palette_transparent, (40, 60), (0, 0, 255), 0),
    ("la.png", _la, (5, 5), (255, 255, 255), 0),
]


@pytest.mark.parametrize(("name", "make", "at", "rgb", "tol"), MODES, ids=[m[0] for m in MODES])
def test_any_mode_becomes_rgb(name, make, at, rgb, tol):
    pixels = decode_image(make(), name)
    assert pixels.dtype == np.uint8 and pixels.shape == (80, 80, 3)
    assert np.abs(pixels[at].astype(int) - np.array(rgb)).max() <= tol


def test_exif_rotation_is_applied():
    upright = np.zeros((120, 80, 3), dtype=np.uint8)  # portrait, red marker at the top
    upright[:20, :, 0] = 255
    # Stored as landscape (rotated 90 deg clockwise); Orientation 8 tells viewers to rotate back.
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=-1)))
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    data = _save(stored, "JPEG", quality=95, exif=exif)
    pixels = decode_image(data, "rotated.jpg")
    assert pixels.shape == (120, 80, 3)
    assert pixels[:15, :, 0].mean() > 200 and pixels[-30:, :, 0].mean() < 50


def test_encode_png_strips_exif_and_gps():
    data = _save(_gradient(), "JPEG", exif=_exif_with_gps())
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD)  # the input really has GPS
    written = Image.open(io.BytesIO(encode_png(decode_image(data, "gps.jpg"))))
    assert not written.getexif() and "exif" not in written.info
    assert not written.getexif().get_ifd(GPS_IFD)
    assert set(written.info) <= {"dpi", "gamma"}  # no text / ICC / EXIF chunks


def test_to_pil_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        to_pil(np.zeros((4, 4, 3), dtype=np.float32))
