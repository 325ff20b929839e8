"""The evaluation protocol on real photos and random models of the real architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from skimage import data

from magicapture_pipeline.core.evaluation import metrics as m
from magicapture_pipeline.core.evaluation.protocol import evaluate_images
from magicapture_pipeline.core.identity.embedders import (
    ArcFaceOnnxEmbedder,
    DlibFaceEmbedder,
    IResNetEmbedder,
)
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


class _TableEmbedder:
    """A recognizer stand-in: each image's embedding is looked up by its top-left pixel value."""

    backend = "arcface"

    def __init__(self, table: dict[int, list[float] | None]) -> None:
        self.table = table

    def embed(self, image_rgb, landmarks5=None):
        vector = self.table[int(np.asarray(image_rgb)[0, 0, 0])]
        return None if vector is None else np.asarray(vector, dtype=np.float64)


def _tagged(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value, 0, 0))


def test_csim_is_the_mean_pairwise_cosine_not_the_cosine_to_the_mean():
    """Sources e1 and e2, generated e1: pairs give (1 + 0) / 2 = 0.5 by hand; the cosine to the
    mean source embedding would give 1 / sqrt(2) = 0.7071 (the inflation issue 10 names)."""
    embedder = _TableEmbedder({1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 0.0]})
    result = m.csim(embedder, {"g": _tagged(3)}, [_tagged(1), _tagged(2)])
    assert result.per_image["g"] == pytest.approx(0.5, abs=1e-9)
    assert result.mean == pytest.approx(0.5, abs=1e-9)
    # unequal norms do not matter (cosines), and the set's mean is the mean over all pairs
    embedder.table[4] = [3.0, 4.0]  # cos to e1 = 0.6, to e2 = 0.8
    both = m.csim(embedder, {"g": _tagged(3), "h": _tagged(4)}, [_tagged(1), _tagged(2)])
    assert both.per_image["h"] == pytest.approx(0.7, abs=1e-9)
    assert both.mean == pytest.approx((1.0 + 0.0 + 0.6 + 0.8) / 4, abs=1e-9)


def test_heldout_csim_and_copy_check_by_hand():
    """Training photos e1, e2; held-out photo (0.6, 0.8); one generated face that copies e1."""
    embedder = _TableEmbedder({1: [1, 0, 0], 2: [0, 1, 0], 5: [0.6, 0.8, 0], 3: [1, 0, 0]})
    report = m.identity_report(embedder, {"g": _tagged(3)}, [_tagged(1), _tagged(2)],
                               [_tagged(5)])
    out = report.metrics()
    assert out["csim_arcface"] == pytest.approx(0.5)
    assert out["csim_arcface_heldout"] == pytest.approx(0.6)
    # equally sized sets: one held-out photo, so the nearest of a random 1-photo training subset
    # is the mean of (1, 0) = 0.5, against the held-out photo's 0.6
    assert out["copy_check_arcface_set_size"] == 1.0
    assert out["copy_check_arcface_nearest_training"] == pytest.approx(0.5)
    assert out["copy_check_arcface_nearest_heldout"] == pytest.approx(0.6)
    assert out["copy_check_arcface_gap"] == pytest.approx(-0.1)
    # the held-out real photo's own nearest training photo: max(0.6, 0.8); the generated face's
    # nearest over all training photos is 1.0
    assert out["copy_check_arcface_heldout_photo_nearest_training"] == pytest.approx(0.8)
    assert out["copy_check_arcface_gap_vs_heldout_photo"] == pytest.approx(0.2)
    assert not report.same_as_loss and "csim_arcface_same_as_loss" not in out


def test_csim_of_the_identity_loss_network_is_labelled_same_as_loss(astronaut):
    """The same IResNet as recognizer and loss network -> only ``csim_arcface_same_as_loss``;
    an independently initialised one -> the plain key."""
    from magicapture_pipeline.core.identity.arcface import build_iresnet

    torch.manual_seed(0)
    loss_net = build_iresnet("r18")
    torch.manual_seed(1)
    other_net = build_iresnet("r18")
    landmarks = np.array([[180, 120], [250, 115], [215, 160], [190, 200], [245, 195]], np.float32)
    recognizer = IResNetEmbedder(loss_net, landmark_finder=lambda image: landmarks)
    recognizer.backend = "arcface"
    loss = (IResNetEmbedder(loss_net), None)

    def run(loss_recognizer):
        return evaluate_images(
            {"g": astronaut}, [astronaut], [], identity=(recognizer, None),
            clip=(None, "none"), aesthetic=(None, "none"), face_mask_fn=None,
            face_detect_fn=None, source_landmarks=[landmarks], loss_recognizer=loss_recognizer,
        )

    same = run(loss)
    assert "csim_arcface" not in same.metrics
    assert same.metrics["csim_arcface_same_as_loss"] == pytest.approx(1.0, abs=1e-5)
    assert "identity loss" in same.unavailable["csim_arcface"]
    assert same.info["csim_loss_network_agreement"] == pytest.approx(1.0, abs=1e-5)
    different = run((IResNetEmbedder(other_net), None))
    assert "csim_arcface" in different.metrics
    assert "csim_arcface_same_as_loss" not in different.metrics
    assert different.info["csim_loss_network_agreement"] < m.SAME_NETWORK_AGREEMENT
    unknown = run((None, "checkpoint unreadable"))  # cannot compare: labelled, to be safe
    assert "csim_arcface_same_as_loss" in unknown.metrics and "csim_arcface" not in unknown.metrics
    assert "csim_arcface" in run(None).metrics  # no identity loss ran
    assert "no held-out source photo" in run(None).unavailable["csim_arcface_heldout"]
    with_heldout = evaluate_images(
        {"g": astronaut}, [astronaut], [], identity=(recognizer, None), clip=(None, "none"),
        aesthetic=(None, "none"), face_mask_fn=None, face_detect_fn=None,
        source_landmarks=[landmarks], heldout=[astronaut], heldout_landmarks=[landmarks],
    )
    row = with_heldout.per_image["g"]  # every identity column names its recognizer
    assert {"csim_arcface", "csim_arcface_heldout", "copy_check_arcface_nearest_training",
            "copy_check_arcface_nearest_heldout"} <= set(row)
    assert with_heldout.metrics["copy_check_arcface_gap"] == pytest.approx(0.0, abs=1e-6)


def test_loss_recognizer_loads_the_configured_checkpoint(tmp_path):
    from magicapture_pipeline.core.identity.arcface import build_iresnet

    assert m.load_loss_recognizer({"mode": "off", "checkpoint": "x"}) is None
    assert m.load_loss_recognizer({"checkpoint": None}) is None
    torch.manual_seed(0)
    torch.save(build_iresnet("r18").state_dict(), tmp_path / "backbone.pth")
    embedder, reason = m.load_loss_recognizer(
        {"mode": "single_pass", "checkpoint": str(tmp_path / "backbone.pth"), "arch": "r18"}
    )
    assert reason is None and isinstance(embedder, IResNetEmbedder)
    embedder, reason = m.load_loss_recognizer(
        {"mode": "single_pass", "checkpoint": str(tmp_path / "backbone.pth"), "arch": "r50"}
    )
    assert embedder is None and "backbone.pth" in reason


# ----------------------------------------------------------------------------- style


class _TableClip:
    """A CLIP stand-in for the style formula: embeddings looked up by the top-left pixel."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        self.table = table

    def embed(self, images):
        return np.stack([self.table[int(np.asarray(i)[0, 0, 0])] for i in images])


def test_style_is_the_mean_pairwise_cosine_over_reference_x_generated():
    clip = _TableClip({1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 0.0]})
    result = m.style_similarity(clip, {"g": _tagged(3)}, [_tagged(1), _tagged(2)])
    assert result.per_image["g"] == pytest.approx(0.5, abs=1e-9)  # not 0.7071



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
    from magicapture_pipeline.core.faces.regions import FaceRegions

    faces = FaceRegions()  # the real detector: one image with a face, one without
    try:
        evaluation = evaluate_images(
            {"g": astronaut, "no_face": Image.new("RGB", astronaut.size, (90, 140, 200))},
            [astronaut],
            [astronaut],
            identity=(DlibFaceEmbedder(), None),
            clip=clip,
            aesthetic=aesthetic,
            face_mask_fn=None,
            face_detect_fn=faces.detected,
        )
    finally:
        faces.close()
    out = evaluation.as_json()
    assert out["csim_dlib"] > 0.99
    assert out["face_detected_rate"] == 0.5
    assert evaluation.per_image["g"]["face_detected"] is True
    assert evaluation.per_image["no_face"]["face_detected"] is False
    for name in ("style_similarity", "aesthetic_score"):
        assert name not in out
        assert out["unavailable"][name]
    assert all(isinstance(v, float) for k, v in out.items() if k not in ("unavailable", "info"))


# ------------------------------------------------------------------ copy check (issue 18 §4)


def _identity_draws(rng, n, centre, spread):
    vectors = centre + spread * rng.standard_normal((n, centre.size))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _copy_gaps(rng, *, copied: bool, draws: int = 2000, k: int = 4, h: int = 1, g: int = 4):
    """Mean copy-check gaps over many draws of one identity (512-d, photo-to-photo cosine ~0.7)
    through ``identity_report`` itself (a table embedder, so the real wiring runs)."""
    gaps, vs_photo = [], []
    for _ in range(draws):
        centre = rng.standard_normal(512)
        centre /= np.linalg.norm(centre)
        training = _identity_draws(rng, k, centre, 0.03)
        heldout = _identity_draws(rng, h, centre, 0.03)
        if copied:  # every generated face reproduces training photo 0, up to a little noise
            generated = _identity_draws(rng, g, training[0], 0.005)
        else:  # new draws of the same person: no copying at all
            generated = _identity_draws(rng, g, centre, 0.03)
        table = dict(enumerate([*training, *heldout, *generated], start=1))
        embedder = _TableEmbedder(table)
        tags = [_tagged(i) for i in table]
        report = m.identity_report(
            embedder, {f"g{i}": t for i, t in enumerate(tags[k + h:])}, tags[:k],
            tags[k:k + h],
        )
        out = report.metrics()
        gaps.append(out["copy_check_arcface_gap"])
        vs_photo.append(out["copy_check_arcface_gap_vs_heldout_photo"])
    return float(np.mean(gaps)), float(np.mean(vs_photo))


def test_copy_check_reads_zero_without_copying_and_positive_with_it():
    """iid embeddings of one identity: both gaps within +-0.01 of zero over many draws (a max
    over 4 training photos against the mean over 1 held-out read +0.017 here); faces copied
    from one training photo: both clearly positive."""
    rng = np.random.default_rng(0)
    gap, vs_photo = _copy_gaps(rng, copied=False)
    assert abs(gap) < 0.01, gap
    assert abs(vs_photo) < 0.01, vs_photo
    gap, vs_photo = _copy_gaps(rng, copied=True, draws=200)
    assert gap > 0.05, gap
    assert vs_photo > 0.2, vs_photo


# ------------------------------------------------------- n and standard error (issue 18 §4)


def test_every_reported_mean_carries_n_and_its_standard_error(tiny_clip):
    """CSIM by hand: generated faces at cosines 1.0 and 0.6 to the one source -> mean 0.8, n 2,
    SE = std([1, 0.6], ddof=1) / sqrt(2) = 0.2; held-out, style and aesthetic likewise from their
    per-image values. One image: no SE (it does not exist), never a fake 0."""
    embedder = _TableEmbedder({1: [1, 0], 2: [1, 0], 3: [0.6, 0.8], 4: [0, 1]})
    torch.manual_seed(0)
    head = m.AestheticMLP(16).eval()
    rng = np.random.default_rng(1)
    generated = {}
    for key, tag in (("a", 2), ("b", 3)):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        pixels[0, 0] = (tag, 0, 0)
        generated[key] = Image.fromarray(pixels)
    result = evaluate_images(
        generated, [_tagged(1)], [Image.fromarray(data.chelsea()).resize((32, 32))],
        identity=(embedder, None), clip=(tiny_clip, None), aesthetic=(head, None),
        face_mask_fn=None, face_detect_fn=None, heldout=[_tagged(4)],
    )
    out = result.metrics
    assert out["csim_arcface"] == pytest.approx(0.8)
    assert out["csim_arcface_n"] == 2.0
    assert out["csim_arcface_se"] == pytest.approx(0.2)
    assert out["csim_arcface_heldout"] == pytest.approx(0.4)  # cosines 0 and 0.8
    assert out["csim_arcface_heldout_se"] == pytest.approx(0.4)
    for name in ("style_similarity", "aesthetic_score"):
        values = [result.per_image[k][name] for k in sorted(generated)]
        assert out[f"{name}_n"] == 2.0
        assert out[f"{name}_se"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(2)), name
        assert out[f"{name}_se"] > 0
    one = evaluate_images(
        {"a": generated["a"]}, [_tagged(1)], [], identity=(embedder, None),
        clip=(None, "none"), aesthetic=(None, "none"), face_mask_fn=None, face_detect_fn=None,
    )
    assert one.metrics["csim_arcface_n"] == 1.0 and "csim_arcface_se" not in one.metrics


# --------------------------------------------- style masks alike for both sides (issue 18 §4)


@pytest.mark.parametrize("name", ["astronaut", "cameraman", "blank"])
def test_generated_image_is_masked_for_style_exactly_as_a_reference(name, tiny_clip):
    """The same picture as a reference (preprocessing's rule: mesh oval; a face the mesh cannot
    outline -> its detection boxes; no face -> nothing masked) and as a generated image (the
    evaluate wiring, real mediapipe) must score style 1.0: both sides masked alike. scikit-image's
    cameraman is the face the mesh misses (box, not the ellipse the restorer's mask uses)."""
    from magicapture_pipeline.core.evaluation.protocol import MetricModels, evaluate_with
    from magicapture_pipeline.core.faces.analysis import analyze_reference
    from magicapture_pipeline.core.faces.detection import FaceAnalyzer
    from magicapture_pipeline.core.faces.regions import FaceRegions

    pictures = {
        "astronaut": data.astronaut(),
        "cameraman": np.stack([data.camera()] * 3, axis=-1),
        "blank": np.full((256, 256, 3), 127, np.uint8),
    }
    analyzer = FaceAnalyzer()
    try:
        reference = analyze_reference(np.ascontiguousarray(pictures[name]), analyzer, 128)
    finally:
        analyzer.close()
    crop = Image.fromarray(reference.crop)
    models = MetricModels(
        identity=(None, "none"), clip=(tiny_clip, None), aesthetic=(None, "none"),
        faces=FaceRegions(),
    )
    try:
        result = evaluate_with(
            models, {"g": crop}, [], [crop], reference_masks=[Image.fromarray(reference.mask)]
        )
    finally:
        models.close()
    assert result.metrics["style_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert result.per_image["g"]["style_face_masked"] is (name != "blank")
