"""Real photos through the real mediapipe models: the face is found and the mask sits on it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from magicapture_pipeline.core.faces.analysis import FaceResult, analyze_reference, analyze_source
from magicapture_pipeline.core.faces.crops import box_in_crop, square_box_around
from magicapture_pipeline.core.faces.detection import Detection, FaceAnalyzer, face_oval_index
from magicapture_pipeline.core.faces.masks import face_mask
from magicapture_pipeline.core.faces.quality import hamming, phash, sharpness
from magicapture_pipeline.core.faces.throughput import measure_stages, measure_throughput

# Regions of scikit-image's 512x512 astronaut, (y0, y1, x0, x1), checked by eye on an overlay.
HAIR_TOP = (40, 78, 160, 290)
HAIR_SIDES = [(90, 140, 152, 172), (90, 140, 282, 300)]
NECK = (180, 200, 205, 245)
FACE_CENTRE = (100, 160, 195, 255)


@pytest.fixture(scope="module")
def analyzer():
    with FaceAnalyzer() as shared:
        yield shared


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def astronaut_result(analyzer, astronaut):
    return analyze_source(astronaut, analyzer, 512)


def _mask_in_image(result: FaceResult, shape) -> np.ndarray:
    x0, y0, side = result.crop_box
    full = np.zeros(shape[:2], dtype=np.uint8)
    full[y0 : y0 + side, x0 : x0 + side] = cv2.resize(
        result.mask, (side, side), interpolation=cv2.INTER_NEAREST
    )
    return full > 127


def _share(mask: np.ndarray, region) -> float:
    y0, y1, x0, x1 = region
    return float(mask[y0:y1, x0:x1].mean())


def test_astronaut_has_one_confident_face(analyzer, astronaut):
    found = analyzer.detect(astronaut)
    assert len(found) == 1 and found[0].score > 0.8
    x, y, w, h = found[0].box
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 180


def test_mask_sits_on_the_face_not_hair_or_neck(astronaut_result, astronaut):
    result = astronaut_result
    assert result.status == "ok" and result.mask_source == "face_mesh"
    assert 0.08 < result.mask_coverage < 0.35
    ys, xs = np.nonzero(result.mask > 127)
    bx, by, bw, bh = box_in_crop(tuple(result.bbox), result.crop_box, 512)
    assert bx < xs.mean() < bx + bw and by < ys.mean() < by + bh
    full = _mask_in_image(result, astronaut.shape)
    assert _share(full, FACE_CENTRE) > 0.95
    assert _share(full, HAIR_TOP) < 0.15
    assert all(_share(full, side) < 0.05 for side in HAIR_SIDES)
    assert _share(full, NECK) < 0.05


def test_landmarks_are_in_arcface_order(astronaut_result):
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = astronaut_result.landmarks5
    assert lex < nx < rex and lmx < rmx
    assert max(ley, rey) < ny < min(lmy, rmy)


def test_outputs_have_catalog_shapes(astronaut_result):
    assert astronaut_result.crop.shape == (512, 512, 3)
    assert astronaut_result.mask.shape == (512, 512) and astronaut_result.mask.dtype == np.uint8
    assert astronaut_result.latent_mask.shape == (64, 64)
    assert astronaut_result.overlay.shape == (512, 512, 3)
    row = astronaut_result.row()
    assert row["n_faces"] == 1 and 0.01 < row["face_area_fraction"] < 0.2


@pytest.mark.parametrize(
    ("make", "n_faces", "status"),
    [
        (lambda a: np.concatenate([a, a[:, ::-1]], axis=1), 2, "multiple_faces"),
        (lambda a: data.coffee(), 0, "no_face"),
    ],
    ids=["two_side_by_side", "no_face_coffee"],
)
def test_source_face_count_problems(analyzer, astronaut, make, n_faces, status):
    result = analyze_source(np.ascontiguousarray(make(astronaut)), analyzer, 128)
    assert (result.n_faces, result.status) == (n_faces, status)
    assert result.crop.shape == (128, 128, 3)


@pytest.mark.parametrize(
    ("image", "has_face"),
    [(data.astronaut, True), (data.coffee, False)],
    ids=["portrait", "no_face"],
)
def test_reference_mask_is_face_or_empty(analyzer, image, has_face):
    result = analyze_reference(image(), analyzer, 128)
    assert result.status == "ok"
    assert (result.mask_coverage > 0.02) is has_face
    if not has_face:
        assert not result.mask.any() and "whole image" in result.reason


def test_reference_face_the_mesh_misses_is_masked_by_its_box(analyzer):
    """scikit-image's cameraman (a real photo): the detector finds his face (score ~0.9), the
    mesh does not outline it. The face must not stay in the style region (issue 10 §4)."""
    camera = np.ascontiguousarray(np.stack([data.camera()] * 3, axis=-1))
    result = analyze_reference(camera, analyzer, 128)
    assert result.n_faces == 1 and result.mask_source == "detection_box"
    assert "could not outline" in result.reason
    x, y, w, h = (v * 128 / 512 for v in result.bbox)  # crop = whole 512 px image here
    inside = result.mask[int(np.ceil(y)) : int(y + h), int(np.ceil(x)) : int(x + w)]
    assert inside.size > 0 and (inside == 255).all()
    assert result.mask_coverage == pytest.approx(w * h / 128**2, rel=0.15)
    assert result.mask[:, :40].max() == 0  # far from the face: style region


@pytest.mark.parametrize(
    ("box", "size", "scale", "expected"),
    [
        ((100, 100, 50, 50), (400, 300), 2.0, [75, 75, 100]),  # centred, inside
        ((0, 0, 50, 50), (400, 300), 2.0, [0, 0, 100]),  # shifted into the image
        ((350, 250, 50, 50), (400, 300), 2.0, [300, 200, 100]),  # shifted from the far edge
        ((100, 100, 200, 200), (400, 300), 3.0, [50, 0, 300]),  # shrunk to the image height
    ],
)
def test_square_box_around(box, size, scale, expected):
    assert square_box_around(box, size[0], size[1], scale) == expected


def test_mask_dilation_and_feather(astronaut_result):
    crop = astronaut_result.crop
    with FaceAnalyzer() as own:
        points = own.mesh(crop)
    plain = face_mask(points, 512)
    grown = face_mask(points, 512, dilation=0.1)
    shrunk = face_mask(points, 512, dilation=-0.1)
    soft = face_mask(points, 512, feather=0.05)
    assert (shrunk > 127).sum() < (plain > 127).sum() < (grown > 127).sum()
    assert np.count_nonzero((soft > 20) & (soft < 235)) > 10 * np.count_nonzero(
        (plain > 20) & (plain < 235)
    )


def _recompress(rgb):
    ok, buffer = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 70])
    return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize(
    ("name", "other", "low", "high"),
    [
        ("same", lambda a: a, 0, 0),
        ("resized", lambda a: cv2.resize(a, (300, 300), interpolation=cv2.INTER_AREA), 0, 4),
        ("jpeg_q70", _recompress, 0, 4),
        ("brighter", lambda a: np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8), 0, 6),
        ("mirrored", lambda a: np.ascontiguousarray(a[:, ::-1]), 16, 64),
        ("other_photo", lambda a: cv2.resize(data.coffee(), (512, 512)), 16, 64),
    ],
)
def test_phash_distance(astronaut, name, other, low, high):
    distance = hamming(phash(astronaut), phash(other(astronaut)))
    assert low <= distance <= high


def test_phash_format():
    value = phash(data.astronaut())
    assert len(value) == 16 and int(value, 16) >= 0
    assert hamming("ff00", "0f00") == 4


def test_sharpness_drops_with_blur(astronaut):
    assert sharpness(cv2.GaussianBlur(astronaut, (0, 0), 3)) < 0.2 * sharpness(
        astronaut
    )


def test_face_oval_is_one_closed_polygon():
    order = face_oval_index()
    assert len(order) == len(set(order)) == 36 and order[0] == 10


class _Clock:
    """``time.perf_counter`` advancing by a fixed step per call: every timed pass of the real
    face stage (mediapipe runs) then lasts exactly ``step`` seconds, so the reported numbers are
    known in advance (no speed is asserted: that belongs in `make bench`)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_measure_throughput_reports_images_per_second(astronaut, monkeypatch):
    """Two images, every pass 0.25 s wall and 0.01 s CPU: 8 images per second and 5 CPU ms per
    image for both paths (breaks caught: seconds per image instead of images per second; the
    image count left out)."""
    import time

    monkeypatch.setattr(time, "perf_counter", _Clock(0.25))
    monkeypatch.setattr(time, "process_time", _Clock(0.01))
    rates = measure_throughput([astronaut, astronaut[:, ::-1].copy()], resolution=128, repeats=3)
    assert rates == {
        "detect_mesh_mask": pytest.approx(8.0), "detect_mesh_mask_cpu_ms": pytest.approx(5.0),
        "full": pytest.approx(8.0), "full_cpu_ms": pytest.approx(5.0),
    }  # fmt: skip


def test_detection_keypoints_are_in_image_pixels(analyzer, astronaut):
    found = analyzer.detect(astronaut)[0]
    assert len(found.keypoints) == 6
    x, y, w, h = found.box
    (lex, ley), (rex, rey) = found.keypoints[:2]
    assert x < lex < rex < x + w and y < ley < y + h and y < rey < y + h


def test_mesh_from_detection_matches_the_self_detecting_mesh(analyzer, astronaut_result):
    """The source path meshes from the detection (one detector pass) and lands where the
    mesh with its own detector does; a detection without keypoints falls back to it."""
    crop = astronaut_result.crop
    found = analyzer.detect(crop)[0]
    from_detection = analyzer.mesh_at(crop, found)
    own = analyzer.mesh(crop)
    assert from_detection.shape == own.shape == (478, 2)
    assert float(np.abs(from_detection - own).mean()) < 3.0  # px at 512
    bare = Detection(found.score, found.box)
    assert np.array_equal(analyzer.mesh_at(crop, bare), own)


def test_overlay_is_drawn_only_when_read(analyzer, astronaut):
    result = analyze_source(astronaut, analyzer, 128)
    assert result._overlay is None
    drawn = result.overlay
    assert drawn.shape == (128, 128, 3) and result.overlay is drawn
    assert not np.array_equal(drawn, result.crop)


def test_sharpness_is_the_laplacian_variance(astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    expected = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    assert sharpness(astronaut) == pytest.approx(expected, rel=1e-9)
    assert sharpness(gray) == pytest.approx(expected, rel=1e-9)
    assert sharpness(np.full((64, 64, 3), 7, np.uint8)) == 0.0


def test_measure_stages_names_every_part_in_milliseconds(astronaut, monkeypatch):
    """Every timed call lasts 0.004 s on the scripted clock: 4.0 ms per part (break caught:
    seconds reported as milliseconds)."""
    import time

    monkeypatch.setattr(time, "perf_counter", _Clock(0.004))
    stages = measure_stages(astronaut, resolution=128, repeats=3)
    assert stages == {name: pytest.approx(4.0) for name in ("detect", "crop", "mesh", "mask",
                      "sharpness", "analyze_source", "overlay", "phash")}  # fmt: skip


def test_measure_pool_throughput_reports_rate_startup_and_cpu_per_image(monkeypatch):
    """Four photos, 2 copies: 8 tasks a pass, 3 passes; every perf_counter reading 0.25 s after
    the last (start-up 0.25 s, each pass 0.25 s), every process_time reading 4 ms after the last,
    and the two workers' whole-process CPU growing 50 and 30 ms per reading. Checks the start-up
    apart and with the passes, the analysis-only and whole-worker CPU per photo, the parent's,
    and that each task reads the photo it names from the preload (breaks caught: seconds as ms,
    the copies left out of the count, start-up counted in the warm rate, the index ignored)."""
    import time

    from magicapture_pipeline.core.faces import pool as pool_module
    from magicapture_pipeline.core.faces import throughput

    class InProcessPool:
        def __init__(self, workers, *rest, preload=None):
            self.workers = workers
            pool_module._STATE["preload"] = preload

        def worker_pids(self):
            return [1, 2]

        def map(self, function, arguments):
            return [function(*args, None, None) for args in arguments]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pool_module._STATE.pop("preload", None)

    readings = {1: 0.0, 2: 0.0}

    def process_cpu(pid):
        readings[pid] += {1: 0.05, 2: 0.03}[pid]
        return readings[pid]

    photos = [np.full((8, 8, 3), value, np.uint8) for value in range(4)]
    seen = []
    monkeypatch.setattr(pool_module, "FacePool", InProcessPool)
    monkeypatch.setattr(throughput, "process_cpu_s", process_cpu)
    monkeypatch.setattr(throughput, "_full_in_worker", lambda rgb, *rest: seen.append(rgb[0, 0, 0]))
    monkeypatch.setattr(time, "perf_counter", _Clock(0.25))
    monkeypatch.setattr(time, "process_time", _Clock(0.004))
    found = throughput.measure_pool_throughput(photos, 2, repeats=3, copies=2)
    assert seen == [0, 1, 2, 3] + [0, 1, 2, 3, 0, 1, 2, 3] * 3  # warm-up 2 x workers, passes
    assert found["photos_per_pass"] == 8
    assert found["startup_s"] == pytest.approx(0.25)
    assert found["images_per_s"] == pytest.approx(8 / 0.25)
    assert found["images_per_s_with_startup"] == pytest.approx(24 / (0.25 + 3 * 0.25))
    assert found["function_cpu_ms"] == pytest.approx(4.0)
    assert found["worker_cpu_ms"] == pytest.approx(1e3 * (0.05 + 0.03) / 8)
    assert found["parent_cpu_ms"] == pytest.approx(1e3 * 0.004 * (2 * 8 + 1) / 8)
