"""CodeFormer face restoration built in code, loaded from the user's checkpoint.

CodeFormer (Zhou et al., NeurIPS 2022; the restorer the authors' ``inference_magicapture.py`` runs
with fidelity ``w = 0.5``) is a VQGAN autoencoder whose 16x16 code indices are predicted by a
transformer from the degraded face, with encoder features fused back into the decoder at a
controllable weight ``w``. Its weights are non-commercial and never bundled; the research
repository needs basicsr/facexlib (torchvision, run-time downloads) and spandrel needs torchvision,
which fails beside this project's CPU torch. So the network is written here from its published
layout. Module and parameter names follow the released ``codeformer.pth`` (``params_ema``) so it
loads with ``strict=True`` through ``torch.load(weights_only=True)`` or safetensors; this was
checked against the layout in the paper's code, not against the released file (no weights here).

Layout (defaults = the released model): encoder ``blocks`` = conv, six levels of two residual
blocks (channel multipliers 1, 2, 2, 4, 4, 8 of 64; self-attention at 16x16; stride-2 down between
levels), residual / attention / residual, GroupNorm, conv to 256; a 1024 x 256 codebook
(``quantize.embedding``); a 9-layer pre-norm transformer (512 wide, 8 heads, MLP 1024) with a
learned position embedding over the 256 positions and a code classifier (``idx_pred_layer``);
the generator mirrors the encoder; ``fuse_convs_dict`` holds the SFT fusion blocks at 32, 64, 128
and 256 px.

:func:`restore_face` aligns the face to FFHQ's 512 px 5-point template (the template facexlib
uses), restores it and warps it back; the caller blends it in through the face mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# FFHQ 512 px positions of eye, eye, nose tip, mouth corner, mouth corner (image left to right),
# the template CodeFormer's face helper (facexlib) aligns to.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class CodeFormerLayout:
    """Sizes of the network; the defaults are the released CodeFormer's."""

    image_size: int = 512
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)
    res_blocks: int = 2
    attn_resolution: int = 16
    codebook_size: int = 1024
    code_dim: int = 256
    dim_embd: int = 512
    n_head: int = 8
    n_layers: int = 9
    connect_list: tuple[str, ...] = ("32", "64", "128", "256")

    @property
    def latent_side(self) -> int:
        return self.image_size // 2 ** (len(self.channel_mult) - 1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GroupNorm-swish-conv twice with a skip (1x1 conv when the width changes)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_out = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv_out(x) if self.conv_out is not None else x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions with 1x1-conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (
            proj(normed).reshape(b, c, h * w).transpose(1, 2) for proj in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Pad right/bottom by one, 3x3 conv with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _encoder_blocks(layout: CodeFormerLayout) -> tuple[nn.ModuleList, dict[int, int]]:
    """The encoder's blocks and, per level, the block whose output the fusion reads.

    The tap is the level's last residual block (at the attention resolution: before its last
    attention block), as in the released model (block 2 at 512 px ... 14 at 32 px, 18 at 16 px).
    """
    nf, mult = layout.base_channels, layout.channel_mult
    blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, padding=1)]
    taps: dict[int, int] = {}
    width, res = nf, layout.image_size
    for level, m in enumerate(mult):
        for _ in range(layout.res_blocks):
            blocks.append(ResBlock(width, nf * m))
            width = nf * m
            taps[len(blocks) - 1] = res
            if res == layout.attn_resolution:
                blocks.append(AttnBlock(width))
        if level != len(mult) - 1:
            blocks.append(Downsample(width))
            res //= 2
    blocks += [ResBlock(width, width), AttnBlock(width), ResBlock(width, width)]
    blocks += [_group_norm(width), nn.Conv2d(width, layout.code_dim, 3, padding=1)]
    last_per_side = {side: index for index, side in taps.items()}  # later indices win
    return nn.ModuleList(blocks), {index: side for side, index in last_per_side.items()}


def _generator_blocks(layout: CodeFormerLayout) -> tuple[nn.ModuleList, dict[int, int]]:
    """The generator's blocks and, per level, the block after which the fusion writes.

    The tap is the level's first residual block, except at the attention resolution where it is
    the last one (released model: block 6 at 16 px, 9 at 32 px ... 21 at 512 px).
    """
    nf, mult = layout.base_channels, layout.channel_mult
    width, res = nf * mult[-1], layout.latent_side
    blocks: list[nn.Module] = [nn.Conv2d(layout.code_dim, width, 3, padding=1)]
    blocks += [ResBlock(width, width), AttnBlock(width), ResBlock(width, width)]
    taps: dict[int, int] = {}
    for level in reversed(range(len(mult))):
        level_blocks = []
        for _ in range(layout.res_blocks):
            blocks.append(ResBlock(width, nf * mult[level]))
            width = nf * mult[level]
            level_blocks.append(len(blocks) - 1)
            if res == layout.attn_resolution:
                blocks.append(AttnBlock(width))
        taps[level_blocks[-1] if res == layout.attn_resolution else level_blocks[0]] = res
        if level != 0:
            blocks.append(Upsample(width))
            res *= 2
    blocks += [_group_norm(width), nn.Conv2d(width, 3, 3, padding=1)]
    return nn.ModuleList(blocks), taps


class SftFuse(nn.Module):
    """Fuse encoder features into the decoder: ``dec + w * (dec * scale + shift)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.shift = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, enc: Tensor, dec: Tensor, w: float) -> Tensor:
        fused = self.encode_enc(torch.cat([enc, dec], dim=1))
        return dec + w * (dec * self.scale(fused) + self.shift(fused))


class TransformerLayer(nn.Module):
    """Pre-norm self-attention (position added to queries and keys) and a GELU MLP."""

    def __init__(self, dim: int, n_head: int, dim_mlp: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, n_head, dropout=0.0)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h + pos, h + pos, value=h, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class Codebook(nn.Module):
    """The VQGAN codebook (``embedding``: codebook_size x code_dim)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, dim)

    def lookup(self, indices: Tensor, side: int) -> Tensor:
        """``(B, HW)`` indices -> ``(B, code_dim, side, side)`` code vectors."""
        codes = self.embedding(indices)
        return codes.reshape(indices.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()


def _adain(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """``content`` renormalised to ``style``'s per-channel mean and std."""
    c_mean, s_mean = content.mean((2, 3), keepdim=True), style.mean((2, 3), keepdim=True)
    c_std = (content.flatten(2).var(2) + eps).sqrt()[..., None, None]
    s_std = (style.flatten(2).var(2) + eps).sqrt()[..., None, None]
    return (content - c_mean) / c_std * s_std + s_mean


class CodeFormer(nn.Module):
    """CodeFormer: faces in ``[-1, 1]`` (``B, 3, S, S``) -> restored faces in ``[-1, 1]``."""

    def __init__(self, layout: CodeFormerLayout | None = None) -> None:
        super().__init__()
        self.layout = layout = layout or CodeFormerLayout()
        self.encoder = nn.Module()
        self.encoder.blocks, self._enc_taps = _encoder_blocks(layout)
        self.quantize = Codebook(layout.codebook_size, layout.code_dim)
        self.generator = nn.Module()
        self.generator.blocks, self._gen_taps = _generator_blocks(layout)
        self.position_emb = nn.Parameter(torch.zeros(layout.latent_side**2, layout.dim_embd))
        self.feat_emb = nn.Linear(layout.code_dim, layout.dim_embd)
        self.ft_layers = nn.Sequential(
            *[
                TransformerLayer(layout.dim_embd, layout.n_head, 2 * layout.dim_embd)
                for _ in range(layout.n_layers)
            ]
        )
        self.idx_pred_layer = nn.Sequential(
            nn.LayerNorm(layout.dim_embd),
            nn.Linear(layout.dim_embd, layout.codebook_size, bias=False),
        )
        widths = self._tap_widths()
        self.fuse_convs_dict = nn.ModuleDict(
            {size: SftFuse(widths[int(size)]) for size in layout.connect_list}
        )

    def _tap_widths(self) -> dict[int, int]:
        widths = {}
        for index, side in self._gen_taps.items():
            block = self.generator.blocks[index]
            widths[side] = block.conv2.out_channels
        return widths

    def forward(self, x: Tensor, w: float = 0.5, adain: bool = True) -> Tensor:
        """Restore ``x`` with fidelity ``w`` (0: codebook only; 1: most faithful to the input)."""
        connect = {int(s) for s in self.layout.connect_list}
        skips: dict[int, Tensor] = {}
        for index, block in enumerate(self.encoder.blocks):
            x = block(x)
            side = self._enc_taps.get(index)
            if side in connect:
                skips[side] = x
        low = x
        tokens = self.feat_emb(low.flatten(2).permute(2, 0, 1))  # (HW, B, dim)
        pos = self.position_emb.unsqueeze(1)
        for layer in self.ft_layers:
            tokens = layer(tokens, pos)
        logits = self.idx_pred_layer(tokens).permute(1, 0, 2)  # (B, HW, codebook)
        codes = self.quantize.lookup(logits.argmax(dim=-1), self.layout.latent_side)
        if adain:
            codes = _adain(codes, low)
        x = codes
        for index, block in enumerate(self.generator.blocks):
            x = block(x)
            side = self._gen_taps.get(index)
            if w > 0 and side in connect:
                x = self.fuse_convs_dict[str(side)](skips[side], x, w)
        return x


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def load_codeformer(path: str | Path, layout: CodeFormerLayout | None = None) -> CodeFormer:
    """CodeFormer from a checkpoint (``codeformer.pth`` with ``params_ema``, or safetensors).

    Raises:
        FileNotFoundError: no file at ``path``.
        RuntimeError: keys or shapes do not match the layout (``strict=True``), naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CodeFormer checkpoint not found: {path}")
    model = CodeFormer(layout)
    model.load_state_dict(_read_state_dict(path), strict=True)
    return model.eval().requires_grad_(False)


def restore_face(
    model: CodeFormer, rgb: np.ndarray, landmarks5: np.ndarray, fidelity: float = 0.5
) -> np.ndarray:
    """The image with its face (at ``landmarks5``) restored and warped back in place.

    The face is aligned to :data:`FFHQ_TEMPLATE_512` (scaled to the model's size) with a
    least-squares similarity transform, restored, and warped back with the inverse transform;
    pixels outside the aligned square keep the input's values. Blend through a face mask after.
    """
    import cv2

    size = model.layout.image_size
    template = FFHQ_TEMPLATE_512 * (size / 512.0)
    points = np.asarray(landmarks5, dtype=np.float32).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(points, template, method=cv2.LMEDS)
    if matrix is None:
        return rgb
    face = cv2.warpAffine(rgb, matrix, (size, size), borderMode=cv2.BORDER_REFLECT101)
    tensor = torch.from_numpy(face).float().permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0
    param = next(model.parameters())
    with torch.no_grad():
        out = model(tensor.to(param.device, param.dtype), w=fidelity, adain=True)
    restored = ((out[0].float().clamp(-1, 1) + 1.0) * 127.5).round().byte()
    restored = restored.permute(1, 2, 0).cpu().numpy()
    height, width = rgb.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(restored, inverse, (width, height), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(
        np.full((size, size), 255, np.uint8), inverse, (width, height), flags=cv2.INTER_NEAREST
    )
    out_image = rgb.copy()
    out_image[inside > 0] = back[inside > 0]
    return out_image
