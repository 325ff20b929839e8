"""Super-resolution, blending, provenance chunk and invisible watermark."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from magicapture_pipeline.core.generation import postprocess as pp


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def test_super_resolution_is_x4_per_side(astronaut):
    upscaler, reason = pp.load_upscaler(model=4, gpuid=-1)
    assert upscaler is not None, reason
    small = astronaut.resize((48, 32))
    big = pp.upscale(upscaler, small)
    assert big.size == (192, 128)
    assert big.mode == "RGB"


def test_provenance_chunk_round_trips(astronaut, tmp_path):
    record = pp.provenance_record(
        concept="c", base_model="m", prompt="a photo of a <v1> person", seed=7, commit="abc"
    )
    path = tmp_path / "x.png"
    path.write_bytes(pp.png_bytes(astronaut.resize((64, 64)), record))
    back = pp.read_provenance(path)
    assert back == record
    assert back["ai_generated"] is True
    assert pp.read_provenance(pp.png_bytes(astronaut.resize((64, 64)), None)) is None


@pytest.mark.parametrize("side", [256, 512])  # dwtDct lost the payload at 256 px; dwtDctSvd not
def test_watermark_round_trips_through_png(astronaut, tmp_path, side):
    record = pp.provenance_record(concept="c", base_model="m", prompt="p", seed=1)
    astronaut = astronaut.resize((side, side))
    marked = pp.mark(astronaut, record, "magicapture")
    assert marked.info[pp.PROVENANCE_KEY]["watermark"] == "magicapture"
    diff = np.abs(np.asarray(marked, dtype=int) - np.asarray(astronaut, dtype=int)).mean()
    assert 0 < diff < 3  # invisible, but really there
    path = tmp_path / "w.png"
    path.write_bytes(pp.png_bytes(marked, marked.info[pp.PROVENANCE_KEY]))
    verdict = pp.verify_provenance(path)
    assert verdict["ai_generated"] and verdict["watermark_ok"], verdict
    # the unmarked photo does not carry it
    assert pp.decode_watermark(astronaut, len("magicapture")) != b"magicapture"


def test_small_images_record_why_no_watermark(astronaut):
    marked = pp.mark(astronaut.resize((128, 128)), {"ai_generated": True}, "magicapture")
    record = marked.info[pp.PROVENANCE_KEY]
    assert "watermark" not in record
    assert "256" in record["watermark_skipped"]
    assert pp.verify_provenance(marked)["watermark_ok"] is None


def test_blend_keeps_outside_and_takes_inside():
    original = Image.new("RGB", (64, 64), (10, 20, 30))
    restored = Image.new("RGB", (64, 64), (200, 100, 50))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    out = np.asarray(pp.blend_face(original, restored, Image.fromarray(mask), feather=2))
    assert (out[:10, :10] == (10, 20, 30)).all()
    assert (out[28:36, 28:36] == (200, 100, 50)).all()


@pytest.mark.parametrize(
    ("backend", "checkpoint", "expected"),
    [
        ("codeformer", None, "no checkpoint configured"),
        ("gfpgan", None, "no checkpoint configured"),
        ("codeformer", "/nonexistent/codeformer.pth", "does not exist"),
    ],
)
def test_face_restoration_unavailable_with_reason(backend, checkpoint, expected):
    restorer, reason = pp.load_face_restorer(backend, checkpoint)
    assert restorer is None
    assert expected in reason


def test_postprocess_records_unavailable_step_and_continues(astronaut):
    images = {"a": astronaut.resize((64, 64))}
    result = pp.postprocess_images(
        images, super_resolution=False, restorer=("codeformer", None, 0.5), progress=False
    )
    assert "face_restoration" in result.unavailable
    assert result.steps == {"a": []}
    assert np.array_equal(np.asarray(result.images["a"]), np.asarray(images["a"]))


def test_verify_command_exit_status(astronaut, tmp_path):
    marked = pp.mark(
        astronaut,
        pp.provenance_record(concept="c", base_model="m", prompt="p", seed=0),
        "magicapture",
    )
    good = tmp_path / "good.png"
    good.write_bytes(pp.png_bytes(marked, marked.info[pp.PROVENANCE_KEY]))
    plain = tmp_path / "plain.png"
    astronaut.save(plain)
    assert pp.main([str(good)]) == 0
    assert pp.main([str(good), str(plain)]) == 1
