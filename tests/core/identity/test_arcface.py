"""ArcFace IResNet, checkpoint loading, differentiable alignment and the identity-loss gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from magicapture_pipeline.core.identity.arcface import (
    ARCFACE_TEMPLATE_112,
    IRESNET_LAYERS,
    FaceIdentityEncoder,
    align_faces,
    build_iresnet,
    load_arcface,
    similarity_transform,
)
from magicapture_pipeline.core.losses import identity_loss, one_step_x0_estimate


@pytest.fixture(scope="module")
def r18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_iresnet("r18")
    # give the BatchNorm running statistics non-default values so a round trip is meaningful
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


# ---------------------------------------------------------------- the backbone and its checkpoints
@pytest.mark.parametrize("arch", ["r18", "r34", "r50", "iresnet100"])
def test_state_dict_has_arcface_torch_layout(arch):
    layers = IRESNET_LAYERS[arch.replace("iresnet", "r")]
    state = build_iresnet(arch).state_dict()
    # 18 tensors per block (3 BN x 5, 2 convs, PReLU), 6 per stage shortcut, stem 7, head 12
    assert len(state) == 18 * sum(layers) + 6 * 4 + 7 + 12
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["layer1.0.downsample.0.weight"] == (64, 64, 1, 1)
    assert shapes["layer4.0.conv2.weight"] == (512, 512, 3, 3)
    assert shapes[f"layer3.{layers[2] - 1}.prelu.weight"] == (256,)
    assert shapes["fc.weight"] == (512, 512 * 7 * 7)
    assert "features.running_var" in shapes and "features.num_batches_tracked" in shapes


@pytest.mark.parametrize(
    ("filename", "prefix"),
    [("backbone.pth", ""), ("ddp_backbone.pth", "module."), ("backbone.safetensors", "")],
)
def test_checkpoint_round_trip_through_load_arcface(tmp_path, r18, filename, prefix):
    state = {prefix + key: value.clone() for key, value in r18.state_dict().items()}
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = load_arcface(path, "r18")
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(faces), r18(faces))


def test_load_arcface_rejects_wrong_arch_and_missing_file(tmp_path, r18):
    path = tmp_path / "backbone.pth"
    torch.save(r18.state_dict(), path)
    with pytest.raises(RuntimeError):
        load_arcface(path, "r34")
    with pytest.raises(FileNotFoundError):
        load_arcface(tmp_path / "absent.pth", "r18")
    with pytest.raises(ValueError, match="unknown IResNet"):
        build_iresnet("r42")


def test_encoder_embeddings_are_normalised_and_backbone_stays_frozen(r18):
    encoder = FaceIdentityEncoder(r18).train()
    assert not encoder.backbone.training
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    landmarks = ARCFACE_TEMPLATE_112.expand(2, 5, 2) + 8.0
    embeddings = encoder(images, landmarks)
    assert embeddings.shape == (2, 512)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))


# ---------------------------------------------------------------- alignment
@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(0.0, 1.0, (0.0, 0.0)), (0.3, 2.0, (10.0, -5.0)), (-1.2, 0.5, (100.0, 40.0))],
)
def test_similarity_transform_recovers_known_transform(angle, scale, shift):
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    expected = torch.tensor([[a, -b, shift[0]], [b, a, shift[1]]])
    src = ARCFACE_TEMPLATE_112
    dst = src @ expected[:, :2].T + expected[:, 2]
    torch.testing.assert_close(similarity_transform(src, dst)[0], expected, atol=1e-4, rtol=1e-4)


def test_align_faces_matches_cv2_warp_affine():
    import cv2
    size = 160
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack([np.sin(xx / 9), np.cos(yy / 7), np.sin((xx + yy) / 13)], axis=-1)
    landmarks = ARCFACE_TEMPLATE_112.numpy() * 1.2 + np.array([15.0, 10.0], dtype=np.float32)
    matrix = similarity_transform(ARCFACE_TEMPLATE_112, torch.from_numpy(landmarks))[0]
    # cv2 wants image -> template; invert the template -> image similarity
    full = np.vstack([matrix.numpy(), [0, 0, 1]])
    expected = cv2.warpAffine(image, np.linalg.inv(full)[:2], (112, 112), flags=cv2.INTER_LINEAR)
    aligned = (
        align_faces(
            torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(landmarks)[None]
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    inner = (slice(4, -4), slice(4, -4))  # borders differ only by padding convention
    np.testing.assert_allclose(aligned[inner], expected[inner], atol=2e-2)


def test_align_faces_identity_on_template_sized_image():
    image = torch.rand(1, 3, 112, 112)
    aligned = align_faces(image, ARCFACE_TEMPLATE_112[None])
    torch.testing.assert_close(aligned, image, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- Eq. 7 end to end
def test_identity_loss_gradient_reaches_unet_through_vae_decode_and_warp(r18):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ).requires_grad_(False)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    encoder = FaceIdentityEncoder(r18)

    latents, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor([300])
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, torch.randn(1, 77, 32)).sample
    x0 = one_step_x0_estimate(noisy, pred, t, scheduler.alphas_cumprod)
    image = vae.decode(x0 / vae.config.scaling_factor).sample  # (1, 3, 64, 64)
    assert image.shape[-1] == 64
    landmarks = ARCFACE_TEMPLATE_112[None] * (64 / 112)
    loss = identity_loss(encoder(image, landmarks), torch.randn(512))
    loss.backward()
    grads = [p.grad for p in unet.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in encoder.parameters())


@pytest.mark.parametrize(
    ("scale", "shift", "latent", "expected"),
    [
        (1.0, (0.0, 0.0), (14, 14), (0, 14, 0, 14)),  # the template itself fills the latent
        (0.5, (32.0, 32.0), (32, 32), (2, 13, 2, 13)),  # a 56 px face at (32, 32): 4..11 + 2
        (1.0, (200.0, 0.0), (32, 32), (0, 16, 23, 32)),  # clamped at the latent's edges
    ],
)
def test_face_latent_window_covers_the_aligned_face(scale, shift, latent, expected):
    from magicapture_pipeline.core.identity.arcface import face_latent_window

    landmarks = (ARCFACE_TEMPLATE_112 * scale + torch.tensor(shift))[None]
    assert face_latent_window(landmarks, latent, latent_factor=8, margin=2) == expected


def test_a_random_r100_stand_in_embeds_finite_and_distinct_vectors():
    """Issue 19 §3: arcface_torch's N(0, 0.1) conv init overflows fp32 through an r100 in eval
    mode (every embedding NaN, so Eq. 7 was NaN at real size); zero-init residuals keep it finite
    (break caught: ``zero_init_residual`` ignored)."""
    import torch

    from magicapture_pipeline.core.identity.arcface import build_iresnet, freeze

    torch.manual_seed(0)
    net = freeze(build_iresnet("r100", zero_init_residual=True))
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        features = net(faces)
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])
