"""CodeFormer built in code: the released layout, the real loading path, restoration in place.

No CodeFormer weights exist here (non-commercial, never bundled): the networks are randomly
initialised, saved and loaded back through ``load_codeformer`` / ``load_face_restorer``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from magicapture_pipeline.core.generation import codeformer as cf
from magicapture_pipeline.core.generation import postprocess as pp

TINY = cf.CodeFormerLayout(
    image_size=64,
    base_channels=32,
    channel_mult=(1, 1, 2, 2),
    attn_resolution=8,
    codebook_size=64,
    code_dim=32,
    dim_embd=32,
    n_head=2,
    n_layers=2,
    connect_list=("16", "32"),
)
# The astronaut's 5 landmarks (FaceRegions.landmarks5: mediapipe mesh, ArcFace order), 512 px.
ASTRONAUT_LANDMARKS = np.array(
    [[203.5, 101.1], [246.6, 103.5], [223.4, 130.0], [201.8, 139.2], [245.0, 141.0]], np.float32
)


def test_released_layout_names_and_shapes():
    """The parameter names and shapes of the released codeformer.pth (params_ema), read from the
    layout of the paper's code, and the fusion taps at its block indices."""
    with torch.device("meta"):
        model = cf.CodeFormer()
    state = model.state_dict()
    expected = {
        "encoder.blocks.0.weight": (64, 3, 3, 3),
        "encoder.blocks.16.conv_out.weight": (512, 256, 1, 1),
        "encoder.blocks.17.q.weight": (512, 512, 1, 1),
        "encoder.blocks.24.weight": (256, 512, 3, 3),
        "quantize.embedding.weight": (1024, 256),
        "generator.blocks.8.conv.weight": (512, 512, 3, 3),
        "generator.blocks.24.weight": (3, 64, 3, 3),
        "position_emb": (256, 512),
        "feat_emb.weight": (512, 256),
        "ft_layers.8.self_attn.in_proj_weight": (1536, 512),
        "ft_layers.8.linear1.weight": (1024, 512),
        "idx_pred_layer.1.weight": (1024, 512),
        "fuse_convs_dict.256.encode_enc.conv_out.weight": (128, 256, 1, 1),
        "fuse_convs_dict.32.scale.2.weight": (256, 256, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "ft_layers.9.linear1.weight" not in state and "idx_pred_layer.1.bias" not in state
    assert sorted(model.fuse_convs_dict) == ["128", "256", "32", "64"]
    assert model._enc_taps == {2: 512, 5: 256, 8: 128, 11: 64, 14: 32, 18: 16}
    assert model._gen_taps == {6: 16, 9: 32, 12: 64, 15: 128, 18: 256, 21: 512}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_random_checkpoint_loads_through_the_real_path(tmp_path, suffix):
    torch.manual_seed(0)
    model = cf.CodeFormer(TINY).eval()
    path = tmp_path / f"codeformer{suffix}"
    if suffix == ".pth":
        torch.save({"params_ema": model.state_dict()}, path)  # the release's format
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = cf.load_codeformer(path, TINY)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model(x, w=0.5)
        out = loaded(x, w=0.5)
        codebook_only = loaded(x, w=0.0)
    assert out.shape == (1, 3, 64, 64)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, codebook_only)  # fidelity w reaches the output
    assert not any(p.requires_grad for p in loaded.parameters())


def test_wrong_checkpoint_is_refused_with_the_reason(tmp_path):
    torch.save({"params_ema": {"not": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        cf.load_codeformer(tmp_path / "bad.pth", TINY)
    restorer, reason = pp.load_face_restorer(
        "codeformer", str(tmp_path / "bad.pth"), landmark_fn=lambda rgb: None
    )
    assert restorer is None and "does not load as CodeFormer" in reason


def test_restore_face_changes_the_face_only():
    torch.manual_seed(0)
    model = cf.CodeFormer(TINY).eval()
    rgb = data.astronaut()
    out = cf.restore_face(model, rgb, ASTRONAUT_LANDMARKS, fidelity=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    changed = np.any(out != rgb, axis=-1)
    assert changed[95:145, 200:250].mean() > 0.9  # the face
    assert not changed[:, :100].any() and not changed[400:, :].any()  # far from it: untouched


def test_gfpgan_reports_why_it_cannot_run(tmp_path):
    checkpoint = tmp_path / "GFPGANv1.4.pth"
    checkpoint.write_bytes(b"")
    restorer, reason = pp.load_face_restorer("gfpgan", str(checkpoint))
    assert restorer is None
    assert "basicsr" in reason and "torchvision" in reason and "codeformer" in reason


@pytest.mark.slow
def test_full_size_codeformer_runs_in_the_postprocessing_step(tmp_path):
    """The released size (94 M parameters), randomly initialised, through the same call the
    postprocess pipeline and the benchmark's '+ post-processing' row make."""
    torch.manual_seed(0)
    torch.save({"params_ema": cf.CodeFormer().state_dict()}, tmp_path / "codeformer.pth")
    image = Image.fromarray(data.astronaut())
    mask = np.zeros((512, 512), np.uint8)
    mask[100:180, 190:260] = 255
    result = pp.postprocess_images(
        {"a": image},
        super_resolution=False,
        restorer=("codeformer", str(tmp_path / "codeformer.pth"), 0.5),
        face_mask_fn=lambda im: Image.fromarray(mask),
        landmark_fn=lambda rgb: ASTRONAUT_LANDMARKS,
        progress=False,
    )
    assert result.unavailable == {}
    assert result.steps == {"a": ["face_restoration:codeformer+blend"]}
    out = np.asarray(result.images["a"])
    changed = np.any(out != np.asarray(image), axis=-1)
    assert changed[110:170, 200:250].mean() > 0.9 and not changed[300:, :].any()
