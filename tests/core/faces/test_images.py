"""Robust decoding: every bad input named with file and rule; every mode becomes 8-bit RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from magicapture_pipeline.core.faces.images import (
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


_MAKE_8K = """
import sys
from PIL import Image
gradient = Image.linear_gradient("L").resize((8192, 8192))
Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient)).save(
    sys.argv[1], quality=85)
"""

_DECODE = """
import json, sys
from magicapture_pipeline.core.faces.images import ImageDecodeError, RawImage, decode_image

def peak_mb():  # VmHWM: this process's own peak (ru_maxrss survives fork + exec from pytest)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

data = open(sys.argv[1], "rb").read()
raw = RawImage("big", sys.argv[1], data)
before = peak_mb()
max_side, max_pixels = int(sys.argv[2]) or None, int(sys.argv[3])
try:
    shape = list(decode_image(raw, max_side=max_side, max_pixels=max_pixels).shape)
except ImageDecodeError as error:
    shape = error.rule
after = peak_mb()
print(json.dumps({"shape": shape, "peak_mb": after, "growth_mb": after - before}))
"""


@pytest.fixture(scope="module")
def photo_8k(tmp_path_factory):
    import subprocess
    import sys

    path = tmp_path_factory.mktemp("big") / "8k.jpg"
    subprocess.run([sys.executable, "-c", _MAKE_8K, str(path)], check=True, timeout=300)
    return path


def _decode_in_child(path, max_side: int, max_pixels: int = 64_000_000) -> dict:
    import json
    import subprocess
    import sys

    command = [sys.executable, "-c", _DECODE, str(path), str(max_side), str(max_pixels)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_8k_photo_decodes_at_bounded_memory_and_the_bomb_guard_stays(photo_8k):
    """8192 x 8192 JPEG (67 MP): libjpeg decodes it at 1/2 scale (4096 px side), so the process
    grows by a quarter of what the full-size decode costs; without the reduced decode the 64 MP
    guard refuses it before any pixel is decoded (Pillow's own guard is untouched)."""
    reduced = _decode_in_child(photo_8k, 4096)
    assert reduced["shape"] == [4096, 4096, 3]
    full_size = _decode_in_child(photo_8k, 0, max_pixels=100_000_000)  # guard lifted: to compare
    assert full_size["shape"] == [8192, 8192, 3]
    assert reduced["growth_mb"] < 0.4 * full_size["growth_mb"], (reduced, full_size)
    refused = _decode_in_child(photo_8k, 0)
    assert refused["shape"] == "decompression_bomb" and refused["growth_mb"] < 50, refused


def test_heic_decodes_and_a_refused_file_raises_its_rule():
    image = Image.new("RGB", (96, 80), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="HEIF", quality=95)
    rgb = decode_image(RawImage("phone", "IMG_0001.HEIC", buffer.getvalue()))
    assert rgb.shape == (80, 96, 3) and abs(int(rgb[40, 48, 0]) - 200) < 12
    refused = RawImage("x", "photos/x.CR2", b"", refused="unsupported_format: .CR2 files ...")
    with pytest.raises(ImageDecodeError, match=r"photos/x.CR2: unsupported_format: .CR2"):
        decode_image(refused)
