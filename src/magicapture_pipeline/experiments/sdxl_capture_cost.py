"""What capturing SDXL's cross-attention for Eq. 8 costs, and which layers each choice reads.

Two parts:

* **Layers** (SDXL base's real architecture, built on the meta device, no weights): how many
  ``attn2`` modules run at each resolution at 1024 px, i.e. how many layers the capture
  hand-computes for ``stage_two.attention.resolution: 32`` (the ``sdxl`` env) vs 64 vs all.
* **Time** (the tiny random SDXL of ``demo-sdxl``, CPU): one training step (UNet forward +
  backward with LoRA on ``attn2``, Eq. 8 on the captured maps when capturing) with no capture and
  with the configured layers (the tiny model's only cross-attention level, 8 x 8), timed in
  alternation (``repeats`` rounds; the median per variant and its ratio to no capture).

The tiny model's time ratios say what the capture adds to a small UNet on a CPU; they are not
SDXL-at-1024-px figures (no GPU here): at 1024 px the hand-computed probabilities per captured
layer are ``heads x 1024 x 77`` for the 32 x 32 layers vs ``heads x 4096 x 77`` at 64 x 64.

Rerun: ``python -m magicapture_pipeline.experiments.sdxl_capture_cost`` (``--repeats``, ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def sdxl_layer_counts() -> dict[str, Any]:
    """``attn2`` modules per resolution of SDXL base at 1024 px (meta device)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from magicapture_pipeline.core.models.attention import cross_attention_resolutions
    from magicapture_pipeline.core.models.sdxl import SDXL_UNET

    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET)
    sizes = cross_attention_resolutions(unet, latent_size=128)
    with_mid = cross_attention_resolutions(unet, latent_size=128, include_mid=True)
    counts: dict[str, int] = {}
    for size in sizes.values():
        counts[str(size)] = counts.get(str(size), 0) + 1
    blocks = sorted({name.split(".attentions.")[0] for name, s in sizes.items() if s == 32})
    return {
        "attn2_per_resolution_down_up": counts,
        "attn2_mid_block": len(with_mid) - len(sizes),
        "blocks_at_32": blocks,
    }


def _tiny_parts(folder: Path) -> Any:
    from magicapture_pipeline.config.model import TinyModelConfig
    from magicapture_pipeline.core.models.builders import build_tiny_model
    from magicapture_pipeline.core.models.loading import load_components

    config = TinyModelConfig(
        family="sdxl",
        sample_size=128,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        transformer_layers_per_block=[1, 2],
    )  # the demo-sdxl model
    return load_components(build_tiny_model(folder / "tiny_sdxl", config))


def time_steps(repeats: int) -> dict[str, Any]:
    """Median step seconds with no capture / configured layers / every down-up attn2."""
    from peft import LoraConfig

    from magicapture_pipeline.core import losses
    from magicapture_pipeline.core.models.attention import CrossAttentionCapture
    from magicapture_pipeline.core.models.families import FamilyAdapter

    with tempfile.TemporaryDirectory() as folder:
        parts = _tiny_parts(Path(folder))
    adapter = FamilyAdapter(parts)
    adapter.add_placeholder_tokens(["<v1>", "<v2>"], ["person", "painting"])
    torch.manual_seed(0)
    parts.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=r".*attn2\.(to_q|to_k|to_v|to_out\.0)$")
    )
    cond = adapter.encode(["a photo of a <v1> person in the <v2> style"], "cpu")
    cond.hidden, cond.pooled = cond.hidden.detach(), cond.pooled.detach()
    ids = cond.ids[0].tolist()
    positions = [ids.index(parts.tokenizer.convert_tokens_to_ids(t)) for t in ("<v1>", "<v2>")]
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    region = torch.zeros(1, 2, 16, 16)
    region[:, 0, 4:12, 4:12] = 1.0
    region[:, 1] = 1.0 - region[:, 0]
    timesteps = torch.tensor([500])
    variants = {"none": None, "configured_8x8": CrossAttentionCapture(parts.unet, resolution=8)}

    def step(capture: Any) -> float:
        start = time.perf_counter()
        pred = adapter.predict(parts.unet, latents, timesteps, cond)
        loss = pred.float().pow(2).mean()
        if capture is not None:
            loss = loss + 2.5 * losses.attention_refocusing_loss(
                capture.token_maps(positions).float(), region
            )
        loss.backward()
        parts.unet.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(repeats + 1):
        for name, capture in variants.items():
            if capture is not None:
                capture.install()
            try:
                seconds = step(capture)
            finally:
                if capture is not None:
                    capture.remove()
            if round_index:  # the first round warms up
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": "demo-sdxl tiny random SDXL, 128 px (latents 16x16), CPU, fp32",
        "layers": {name: len(c.layer_names) if c else 0 for name, c in variants.items()},
        "median_step_s": {k: round(v, 5) for k, v in medians.items()},
        "ratio_to_none": {k: round(v / medians["none"], 3) for k, v in medians.items()},
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per variant")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    report = {"sdxl_base_1024px": sdxl_layer_counts(), "tiny_sdxl_step": time_steps(args.repeats)}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
