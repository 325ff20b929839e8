"""A differentiable ArcFace identity encoder for the identity loss (Eq. 7).

* :class:`IResNet` - the arcface_torch backbone (iresnet18/34/50/100/200: 112x112 RGB in
  ``[-1, 1]`` -> 512-d feature). Parameter and buffer names are arcface_torch's, so a released
  ``backbone.pth`` loads with ``strict=True`` and ``weights_only=True``.
* :func:`align_faces` - the standard 5-point similarity alignment to ArcFace's 112x112 template,
  done with ``affine_grid`` / ``grid_sample`` so gradients flow from the embedding back to the
  decoded image (the official code warps with kornia for the same reason).
* :class:`FaceIdentityEncoder` - align + backbone + L2 normalisation; frozen, but differentiable
  w.r.t. its input images.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALIGNED_SIZE = 112
EMBEDDING_DIM = 512

# insightface's reference landmarks for a 112x112 crop, in pixel coordinates (pixel centres at
# integers, as cv2.warpAffine): left eye, right eye, nose tip, left and right mouth corner.
ARCFACE_TEMPLATE_112 = torch.tensor(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=torch.float32,
)

IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}


def _conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block of IResNet (BN-conv-BN-PReLU-conv-BN + shortcut)."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Residual branch plus (possibly downsampled) shortcut."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """The arcface_torch IResNet backbone (Deng et al., ArcFace), 112x112 input.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 14, 3)`` for r50.
        num_features: embedding size (512 in every released checkpoint).
        dropout: dropout before the final linear layer (0 at inference).
    """

    fc_scale = 7 * 7

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_features: int = EMBEDDING_DIM,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        stage = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample)]
        self.inplanes = planes
        stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: Tensor) -> Tensor:
        """Embed aligned faces ``(B, 3, 112, 112)`` (RGB in ``[-1, 1]``) to ``(B, 512)``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


def build_iresnet(arch: str, zero_init_residual: bool = False) -> IResNet:
    """Build a randomly initialised IResNet.

    Args:
        arch: ``r18``, ``r34``, ``r50``, ``r100`` or ``r200`` (``iresnet50`` style names too).
        zero_init_residual: start each block's last BatchNorm scale at 0, so every residual
            branch starts as the identity (Goyal et al. 2017; torchvision's
            ``zero_init_residual``). For a random stand-in that is used, not trained from
            scratch: with arcface_torch's N(0, 0.1) conv init, an r100 in eval mode overflows
            fp32 and embeds every image as NaN (issue 19 §3 found it at real size). A loaded
            checkpoint overwrites these scales.

    Returns:
        The backbone in train mode.
    """
    key = arch.lower().replace("iresnet", "r")
    if key not in IRESNET_LAYERS:
        raise ValueError(f"unknown IResNet arch {arch!r}; choose one of {sorted(IRESNET_LAYERS)}")
    network = IResNet(IRESNET_LAYERS[key])
    if zero_init_residual:
        for module in network.modules():
            if isinstance(module, IBasicBlock):
                nn.init.zeros_(module.bn3.weight)
    return network


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {key.removeprefix("module."): value for key, value in state.items()}


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode and stop gradients to its parameters (inputs still get them)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def load_arcface(path: str | Path, arch: str) -> IResNet:
    """Load an arcface_torch checkpoint (``backbone.pth`` or ``.safetensors``), frozen.

    Args:
        path: the checkpoint; a ``torch.save``'d state dict is read with ``weights_only=True``
            (a DDP ``module.`` prefix is stripped).
        arch: the backbone it was trained with (``r50``, ``r100``, ...).

    Returns:
        The IResNet in eval mode with ``requires_grad`` False everywhere.

    Raises:
        FileNotFoundError: no file at ``path``.
        RuntimeError: the keys or shapes do not match ``arch`` (``strict=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ArcFace checkpoint not found: {path}")
    model = build_iresnet(arch)
    model.load_state_dict(_read_state_dict(path), strict=True)
    return freeze(model)


def similarity_transform(src_pts: Tensor, dst_pts: Tensor) -> Tensor:
    """Least-squares 2-D similarity (rotation, uniform scale, translation) mapping src to dst.

    The closed form of Umeyama's estimate without reflection, written with sums only (no SVD), so
    it is batched and smoothly differentiable. The same result as
    ``skimage.transform.SimilarityTransform.estimate`` on non-degenerate points.

    Args:
        src_pts: ``(B, N, 2)`` or ``(N, 2)`` points.
        dst_pts: ``(B, N, 2)`` or ``(N, 2)`` points (broadcast against ``src_pts``).

    Returns:
        ``(B, 2, 3)`` matrices ``[[a, -b, tx], [b, a, ty]]`` with ``dst ≈ M @ [src, 1]``.
    """
    src, dst = torch.broadcast_tensors(src_pts.float(), dst_pts.float().to(src_pts.device))
    if src.ndim == 2:
        src, dst = src.unsqueeze(0), dst.unsqueeze(0)
    src_mean = src.mean(dim=1, keepdim=True)
    dst_mean = dst.mean(dim=1, keepdim=True)
    sx, sy = (src - src_mean).unbind(-1)
    dx, dy = (dst - dst_mean).unbind(-1)
    norm = (sx.pow(2) + sy.pow(2)).sum(dim=1).clamp_min(1e-12)
    a = (sx * dx + sy * dy).sum(dim=1) / norm
    b = (sx * dy - sy * dx).sum(dim=1) / norm
    rotation = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], dim=-2)
    translation = dst_mean.squeeze(1) - (rotation @ src_mean.transpose(1, 2)).squeeze(-1)
    return torch.cat([rotation, translation.unsqueeze(-1)], dim=-1)


def _homogeneous(matrix: Tensor) -> Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0], device=matrix.device, dtype=matrix.dtype)
    return torch.cat([matrix, bottom.expand(matrix.shape[0], 1, 3)], dim=1)


def align_faces(images: Tensor, landmarks5: Tensor, output_size: int = ALIGNED_SIZE) -> Tensor:
    """Warp faces to ArcFace's 112x112 template with a differentiable bilinear resampling.

    The similarity from the template to the image landmarks is estimated
    (:func:`similarity_transform`) and turned into an ``affine_grid`` (normalised coordinates,
    ``align_corners=False``, pixel centres at integer pixel coordinates as in ``cv2.warpAffine``),
    then ``grid_sample`` reads the image; outside the image reads zeros. Gradients flow to
    ``images`` (and to ``landmarks5`` if they require grad).

    Args:
        images: ``(B, 3, H, W)`` in ``[-1, 1]``.
        landmarks5: ``(B, 5, 2)`` x/y pixel coordinates in ``images`` (left eye, right eye, nose,
            left and right mouth corner).
        output_size: side of the aligned crop (the template is scaled if not 112).

    Returns:
        ``(B, 3, output_size, output_size)`` aligned faces, same value range.
    """
    batch, _, height, width = images.shape
    template = ARCFACE_TEMPLATE_112.to(images.device) * (output_size / ALIGNED_SIZE)
    to_image = _homogeneous(similarity_transform(template, landmarks5.to(images.device)))
    to_image = to_image.expand(batch, 3, 3) if to_image.shape[0] == 1 else to_image
    half = output_size / 2.0
    dtype = to_image.dtype
    # normalised output coordinates -> output (template) pixel coordinates
    out_to_pixels = torch.tensor(
        [[half, 0.0, half - 0.5], [0.0, half, half - 0.5], [0.0, 0.0, 1.0]],
        device=images.device,
        dtype=dtype,
    )
    # input pixel coordinates -> normalised input coordinates
    pixels_to_in = torch.tensor(
        [
            [2.0 / width, 0.0, 1.0 / width - 1.0],
            [0.0, 2.0 / height, 1.0 / height - 1.0],
            [0.0, 0.0, 1.0],
        ],
        device=images.device,
        dtype=dtype,
    )
    theta = (pixels_to_in @ to_image @ out_to_pixels)[:, :2, :]
    grid = F.affine_grid(
        theta.to(images.dtype),
        [batch, images.shape[1], output_size, output_size],
        align_corners=False,
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def face_latent_window(
    landmarks5: Tensor,
    latent_size: tuple[int, int],
    latent_factor: int = 8,
    margin: int = 2,
) -> tuple[int, int, int, int]:
    """The latent window that holds the face ArcFace reads, for a cheaper identity-loss decode.

    The identity loss (Eq. 7) only looks at the 112x112 aligned face, so the VAE may decode just
    the latent window around it instead of the whole image (decode cost is proportional to area).
    The window is the bounding box of the aligned square's corners mapped into the image, divided
    by ``latent_factor``, grown by ``margin`` latent pixels for the decoder's receptive field,
    clamped to the latent, and the union over the batch. It is an approximation (the VAE
    mid-block attends over the decoded window only), offered as an option, not the paper's recipe.

    Args:
        landmarks5: ``(B, 5, 2)`` image pixel coordinates.
        latent_size: ``(h, w)`` of the latent.
        latent_factor: image pixels per latent pixel (8 for SD's VAE).
        margin: extra latent pixels on each side.

    Returns:
        ``(top, bottom, left, right)`` latent indices (bottom/right exclusive). Decode
        ``latents[..., top:bottom, left:right]`` and shift the landmarks by
        ``(left, top) * latent_factor``.
    """
    matrix = similarity_transform(ARCFACE_TEMPLATE_112.to(landmarks5.device), landmarks5)
    side = float(ALIGNED_SIZE)
    corners = torch.tensor(
        [[0.0, 0.0, 1.0], [side, 0.0, 1.0], [0.0, side, 1.0], [side, side, 1.0]],
        device=matrix.device,
    )
    mapped = corners @ matrix.transpose(1, 2)  # (B, 4, 2) image pixels
    low = torch.floor(mapped.amin(dim=(0, 1)) / latent_factor).long() - margin
    high = torch.ceil(mapped.amax(dim=(0, 1)) / latent_factor).long() + margin
    height, width = latent_size
    left, top = max(0, int(low[0])), max(0, int(low[1]))
    right, bottom = min(width, int(high[0])), min(height, int(high[1]))
    if right <= left or bottom <= top:
        return 0, height, 0, width
    return top, bottom, left, right


class FaceIdentityEncoder(nn.Module):
    """Align faces by their 5 landmarks and embed them with a frozen IResNet.

    The backbone stays in eval mode (``train()`` does not change it) and its parameters never
    require grad, but the output is differentiable w.r.t. the input images, which is what the
    identity loss of Eq. 7 needs.

    Args:
        backbone: an :class:`IResNet` (e.g. from :func:`load_arcface`).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = freeze(backbone)

    def train(self, mode: bool = True) -> FaceIdentityEncoder:
        """Keep the backbone in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: Tensor, landmarks5: Tensor) -> Tensor:
        """Embed ``(B, 3, H, W)`` images in ``[-1, 1]`` with landmarks ``(B, 5, 2)``.

        Returns:
            ``(B, 512)`` L2-normalised embeddings.
        """
        aligned = align_faces(images, landmarks5)
        return F.normalize(self.backbone(aligned).float(), dim=-1)
