"""Face embeddings: dlib (real offline model), ArcFace via insightface (random-weight ONNX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image
from skimage import data

from magicapture_pipeline.core.faces.analysis import analyze_source
from magicapture_pipeline.core.faces.detection import FaceAnalyzer
from magicapture_pipeline.core.faces.sample_data import build_sample_set
from magicapture_pipeline.core.identity.embedders import (
    DLIB_SAME_PERSON_DISTANCE,
    ArcFaceOnnxEmbedder,
    DlibFaceEmbedder,
    cosine_similarity,
    distances_to_centre,
    l2_distance,
)


@pytest.fixture(scope="module")
def dlib_embedder() -> DlibFaceEmbedder:
    return DlibFaceEmbedder()


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


def test_dlib_same_person_close_other_person_far(dlib_embedder, hopper):
    variants = [image.pixels for image in build_sample_set("source", 3)]
    vectors = [dlib_embedder.embed(v) for v in variants]
    assert all(v is not None and v.shape == (128,) for v in vectors)
    same = [l2_distance(vectors[0], v) for v in vectors[1:]]
    other = l2_distance(vectors[0], dlib_embedder.embed(hopper))
    assert max(same) < 0.3
    assert other > DLIB_SAME_PERSON_DISTANCE > max(same)
    assert dlib_embedder.backend == "dlib"


def test_dlib_no_face_gives_none(dlib_embedder):
    assert dlib_embedder.embed(data.coffee()) is None


def test_dlib_falls_back_to_landmarks_on_small_crops(dlib_embedder):
    """HOG misses faces ~40 px wide; the 5 mesh landmarks still place the face."""
    with FaceAnalyzer() as analyzer:
        result = analyze_source(data.astronaut(), analyzer, 96)
    assert dlib_embedder.face_rectangle(result.crop) is None
    vector = dlib_embedder.embed(result.crop, np.asarray(result.landmarks5))
    full = dlib_embedder.embed(data.astronaut())
    assert vector is not None and l2_distance(vector, full) < DLIB_SAME_PERSON_DISTANCE


def _tiny_arcface_onnx(path: Path) -> Path:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
            self.fc = torch.nn.Linear(8 * 27 * 27, 512)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    torch.onnx.export(Tiny().eval(), torch.zeros(1, 3, 112, 112), str(path),
                      input_names=["data"], output_names=["embedding"], dynamo=False)
    return path


@pytest.fixture(scope="module")
def arcface(tmp_path_factory) -> ArcFaceOnnxEmbedder:
    return ArcFaceOnnxEmbedder(_tiny_arcface_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx"))


def test_arcface_embeds_aligned_face(arcface):
    with FaceAnalyzer() as analyzer:
        result = analyze_source(data.astronaut(), analyzer, 256)
    points = np.asarray(result.landmarks5)
    first = arcface.embed(result.crop, points)
    again = arcface.embed(result.crop, points)
    shifted = arcface.embed(result.crop, points + 12.0)
    assert arcface.backend == "arcface"
    assert first.shape == (512,) and abs(np.linalg.norm(first) - 1.0) < 1e-5
    assert np.allclose(first, again)
    assert not np.allclose(first, shifted)  # alignment really uses the landmarks


def test_arcface_without_landmarks(arcface, tmp_path):
    assert arcface.embed(data.astronaut()) is None
    finder = ArcFaceOnnxEmbedder(_tiny_arcface_onnx(tmp_path / "t.onnx"),
                                 landmark_finder=lambda image: np.array(
                                     [[200, 100], [250, 100], [225, 130], [205, 150], [245, 150]]))
    assert finder.embed(data.astronaut()).shape == (512,)


def test_arcface_missing_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.onnx"):
        ArcFaceOnnxEmbedder(tmp_path / "nothing.onnx")


@pytest.mark.parametrize(
    ("vectors", "expected"),
    [
        ({"a": [0.0, 0.0]}, {"a": 0.0}),
        ({"a": [0.0, 0.0], "b": [2.0, 0.0]}, {"a": 1.0, "b": 1.0}),
        ({"a": [0.0], "b": [0.1], "c": [0.2], "outlier": [5.0]},
         {"a": 0.15, "b": 0.05, "c": 0.05, "outlier": 4.85}),
        ({}, {}),
    ],
)
def test_distances_to_median(vectors, expected):
    result = distances_to_centre({k: np.array(v) for k, v in vectors.items()})
    assert result.keys() == expected.keys()
    assert all(abs(result[k] - expected[k]) < 1e-9 for k in expected)


def test_cosine_similarity():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)


def test_dlib_models_load_once_per_process(hopper):
    """Every DlibFaceEmbedder of a process shares one set of dlib models (a customize run makes
    four embedders; loading the models costs about 0.6 CPU s each time)."""
    first, second = DlibFaceEmbedder(), DlibFaceEmbedder()
    assert first._encoder is second._encoder and first._detector is second._detector
    assert first._shape is second._shape
    np.testing.assert_array_equal(first.embed(hopper), second.embed(hopper))
