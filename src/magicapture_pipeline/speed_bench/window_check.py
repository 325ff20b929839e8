"""Does a face-window decode keep Eq. 7's aligned face equal to the full decode's? (issue 19 §1)

SD 1.5's VAE (published architecture, random weights, seeded), fp32 on CPU, one random latent at
512 px: the full decode and the ``face_window`` decode (``core.identity.arcface.
face_latent_window`` with the benchmark's face) are aligned to ArcFace's 112 px crop and compared.
``python -m magicapture_pipeline.speed_bench.window_check [margins...]`` prints JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch


def compare(margins: list[int], resolution: int = 512, seed: int = 0) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    from magicapture_pipeline.core.identity.arcface import align_faces, face_latent_window
    from magicapture_pipeline.core.models.random_weights import SD15_VAE
    from magicapture_pipeline.speed_bench.harness import _bench_landmarks

    torch.manual_seed(seed)
    levels = len(SD15_VAE["block_out_channels"])
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        **{**SD15_VAE, "sample_size": resolution},
    ).eval()
    side = resolution // 8
    latent = torch.randn(1, 4, side, side)
    marks = _bench_landmarks(resolution)
    out: dict[str, Any] = {"resolution": resolution, "seed": seed, "margins": {}}
    with torch.no_grad():
        full = align_faces(vae.decode(latent).sample, marks)
        scale = float(full.abs().max())
        for margin in margins:
            top, bottom, left, right = face_latent_window(marks, (side, side), 8, margin)
            image = vae.decode(latent[..., top:bottom, left:right]).sample
            shifted = marks - marks.new_tensor([left * 8, top * 8])
            diff = (align_faces(image, shifted) - full).abs()
            out["margins"][margin] = {
                "window": [top, bottom, left, right],
                "max_abs": float(diff.max()),
                "mean_abs": float(diff.mean()),
                "max_abs_over_full_range": float(diff.max()) / scale,
            }
    return out


if __name__ == "__main__":
    wanted = [int(m) for m in sys.argv[1:]] or [4]
    sys.stdout.write(json.dumps(compare(wanted), indent=2) + "\n")
