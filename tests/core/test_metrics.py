"""The evaluation protocol on real photos and random models of the real architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from skimage import data

from magicapture_pipeline.core import metrics as m
from magicapture_pipeline.core.identity import ArcFaceOnnxEmbedder, DlibFaceEmbedder
from tiny_concept import tiny_clip_vision


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def hopper() -> Image.Image:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


@pytest.fixture(scope="module")
def tiny_clip():
    """A random CLIP vision tower with projection (the real class), 32 px input, 16-d output."""
    model, processor = tiny_clip_vision()
    return m.ClipEmbedder(model, processor)


# ----------------------------------------------------------------------------- CSIM


def test_dlib_csim_same_person_high_other_person_lower(astronaut, hopper):
    embedder = DlibFaceEmbedder()
    same_view = astronaut.crop((20, 0, 480, 460)).transpose(Image.FLIP_LEFT_RIGHT)
    result = m.csim(embedder, {"same": same_view, "other": hopper}, [astronaut])
    assert result.name == "csim_dlib"
    # measured: same 0.993, other 0.883 (dlib descriptors are not zero-centred, so unrelated
    # faces still have a high cosine; the gap is what matters)
    assert result.per_image["same"] > 0.98
    assert result.per_image["other"] < 0.93


def test_csim_without_face_is_none_not_zero(astronaut):
    blank = Image.new("RGB", (256, 256), "gray")
    result = m.csim(DlibFaceEmbedder(), {"blank": blank}, [astronaut])
    assert result.per_image == {"blank": None}
    assert result.mean is None


def _random_arcface_onnx(path):
    """An ONNX with ArcFace's signature: input 1x3x112x112 -> 512-d, random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv = numpy_helper.from_array(rng.normal(size=(8, 3, 8, 8)).astype(np.float32), "conv_w")
    fc = numpy_helper.from_array(rng.normal(size=(8 * 14 * 14, 512)).astype(np.float32), "fc_w")
    nodes = [
        helper.make_node("Conv", ["data", "conv_w"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "fc_w"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_random",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 512])],
        [conv, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_arcface_path_with_random_onnx(tmp_path, astronaut, hopper):
    path = _random_arcface_onnx(tmp_path / "arcface.onnx")
    embedder, reason = m.load_identity_embedder("auto", str(path))
    assert reason is None and isinstance(embedder, ArcFaceOnnxEmbedder)
    landmarks = np.array([[180, 120], [250, 115], [215, 160], [190, 200], [245, 195]], np.float32)
    embedder.landmark_finder = lambda image: landmarks
    vector = embedder.embed(np.asarray(astronaut), landmarks)
    assert vector.shape == (512,)
    result = m.csim(embedder, {"same": astronaut, "other": hopper}, [astronaut], [landmarks])
    assert result.name == "csim_arcface"
    assert result.per_image["same"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("backend", "arcface_model", "expected"),
    [
        ("arcface", None, "arcface_model is not set"),
        ("auto", "/nonexistent/buffalo_l/w600k_r50.onnx", "does not exist"),
    ],
)
def test_arcface_unavailable_with_reason(backend, arcface_model, expected):
    embedder, reason = m.load_identity_embedder(backend, arcface_model)
    assert embedder is None and expected in reason and reason.startswith("csim_arcface")


# ----------------------------------------------------------------------------- style


def test_style_identical_images_score_one(tiny_clip, astronaut):
    result = m.style_similarity(tiny_clip, {"g": astronaut}, [astronaut.copy()])
    assert result.per_image["g"] == pytest.approx(1.0, abs=1e-5)


def test_face_masking_changes_the_clip_input(tiny_clip, astronaut, hopper):
    mask = np.zeros((512, 512), np.uint8)
    mask[60:260, 150:330] = 255
    mask_image = Image.fromarray(mask)
    masked = m.mask_out(astronaut, mask_image)
    changed = np.any(np.asarray(masked) != np.asarray(astronaut), axis=-1)
    assert changed[100:200, 200:300].all() and not changed[400:, :100].any()
    plain = m.style_similarity(tiny_clip, {"g": astronaut}, [hopper])
    with_mask = m.style_similarity(tiny_clip, {"g": astronaut}, [hopper], {"g": mask_image})
    assert with_mask.masked == {"g": True}
    assert with_mask.per_image["g"] != pytest.approx(plain.per_image["g"], abs=1e-6)


# ----------------------------------------------------------------------------- aesthetic


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("head_kind", ["mlp", "linear"])
def test_aesthetic_head_loads_state_dict_and_scores(
    tmp_path, tiny_clip, astronaut, suffix, head_kind
):
    torch.manual_seed(1)
    head = m.AestheticMLP(16) if head_kind == "mlp" else torch.nn.Linear(16, 1)
    path = tmp_path / f"aesthetic{suffix}"
    if suffix == ".pth":
        torch.save(head.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(head.state_dict(), str(path))
    loaded, reason = m.load_aesthetic(path)
    assert reason is None
    scores = m.aesthetic_scores(loaded, tiny_clip, {"a": astronaut})
    expected = head.eval()(torch.from_numpy(tiny_clip.embed([astronaut]))).item()
    assert scores["a"] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- unavailable


def test_metrics_without_weights_are_unavailable_with_reasons(astronaut):
    clip = m.load_clip("/nonexistent/clip-vit-large-patch14", local_files_only=True)
    aesthetic = m.load_aesthetic(None)
    assert clip[0] is None and "could not be loaded" in clip[1]
    evaluation = m.evaluate_images(
        {"g": astronaut},
        [astronaut],
        [astronaut],
        identity=(DlibFaceEmbedder(), None),
        clip=clip,
        aesthetic=aesthetic,
        face_mask_fn=None,
        face_detect_fn=lambda image: True,
    )
    out = evaluation.as_json()
    assert out["csim_dlib"] > 0.99
    assert out["face_detected_rate"] == 1.0
    for name in ("style_similarity", "aesthetic_score"):
        assert name not in out
        assert out["unavailable"][name]
    assert all(isinstance(v, float) for k, v in out.items() if k not in ("unavailable", "info"))


def test_face_regions_on_real_photo(astronaut):
    faces = m.FaceRegions()
    try:
        assert faces.detected(astronaut)
        assert not faces.detected(Image.new("RGB", (256, 256), "gray"))
        mask = np.asarray(faces.mask(astronaut))
        assert mask.shape == (512, 512) and 0.02 < (mask > 127).mean() < 0.5
        assert faces.landmarks5(np.asarray(astronaut)).shape == (5, 2)
    finally:
        faces.close()
