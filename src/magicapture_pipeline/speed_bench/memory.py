"""Peak training memory of a step at real size, without a GPU (issue 19 §2).

The step of :mod:`.flops` runs on the meta device under :class:`LiveBytes`, a
``TorchDispatchMode`` that adds up the bytes of every storage an op creates and subtracts them
when the storage's last tensor dies: the activations autograd saves, the temporaries, the
gradients. Weights, their gradients and AdamW's two fp32 moments are added from the parameters.

Why this and not ``torch.distributed._tools.mem_tracker.MemTracker``: under ``FakeTensorMode``
it failed here (``.to(dtype)`` on fake parameters, and hooks on every parameter fail on frozen
ones, FINDINGS 2026-12-06); the dispatch count needs nothing but meta tensors. What it leaves
out: the CUDA caching allocator's rounding and fragmentation, cuBLAS/cuDNN workspaces and the
CUDA context (~0.5 GB): compare with ``torch.cuda.max_memory_allocated`` when a GPU is lent.

``python -m magicapture_pipeline.speed_bench.memory`` writes
``data/08_reporting/bench_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from magicapture_pipeline.speed_bench import flops as fl
from magicapture_pipeline.speed_bench import meta_step as ms

GIB = 1024**3
# option -> what it switches (the field's training scripts; diffusers' train_text_to_image_lora.py
# --gradient_checkpointing, AutoencoderKL.enable_tiling / enable_slicing)
OPTIONS = ("none", "unet_checkpointing", "unet_te_checkpointing", "all_plus_vae_tiling")
VARIANTS = (fl.DEFAULT_STEP, "stage2_eq8_eq7_face_window_step", "stage2_authors_step")
GOALS_GIB = {"sd15_512": 12.0, "sdxl_1024": 24.0}


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages created inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage()._cdata
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for tensor in pytree.tree_leaves(out):
            # a view of an input (e.g. ``t`` of a weight made before the mode) is not new memory
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage()._cdata not in inputs:
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._seen:  # a view of a storage already counted
            return
        self._seen.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)  # the storage: views outlive bases

    def _free(self, key: int, size: int) -> None:
        if key in self._seen:
            self._seen.discard(key)
            self.live -= size


def static_bytes(model: ms.MetaModel) -> dict[str, int]:
    """Weights (all components), trainable gradients and AdamW's two fp32 moments."""
    modules = (model.unet, model.vae, model.arcface, *model.text_encoders)
    weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    trainable = [p for p in ms.trainable_parameters(model)]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    return {
        "weights": weights,
        "gradients": grads,
        "adam_moments": 2 * 4 * sum(p.numel() for p in trainable),
    }


def _apply(model: ms.MetaModel, option: str) -> None:
    if option == "none":
        return
    model.unet.enable_gradient_checkpointing()
    if option in ("unet_te_checkpointing", "all_plus_vae_tiling"):
        for encoder in model.text_encoders:
            encoder.gradient_checkpointing_enable()
    if option == "all_plus_vae_tiling":
        model.vae.enable_tiling()


def estimate(model: ms.MetaModel, variant: str) -> dict[str, Any]:
    """Peak bytes of one stage-two micro-step of ``variant`` on ``model`` (options applied)."""
    model.unet.train()  # diffusers checkpoints only in training mode
    counter = LiveBytes()
    with fl._stage(model, "two"), counter:
        fl.run_step(model, variant, ms.Tape())
    model.unet.eval()
    static = static_bytes(model)
    return {
        "activations_peak": counter.peak,
        **static,
        "total": counter.peak + sum(static.values()),
    }


def measure(sizes: list[str], dtypes: tuple[str, ...] = ("float16", "bfloat16")) -> dict[str, Any]:
    """Every size x dtype x option (cumulative, in :data:`OPTIONS` order) x variant."""
    rows = []
    for size in sizes:
        for name in dtypes:
            model = ms.build_meta_model(size, dtype=getattr(torch, name))
            for option in OPTIONS:
                _apply(model, option)
                for variant in VARIANTS:
                    found = estimate(model, variant)
                    rows.append({"size": size, "dtype": name, "option": option,
                                 "variant": variant, "total_gib": round(found["total"] / GIB, 2),
                                 "goal_gib": GOALS_GIB[size], **found})  # fmt: skip
    return {"rows": rows}


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Peak training memory per micro-step at real size (GiB, meta-device estimate)",
        "",
        "| size | dtype | option | variant | peak GiB | fits goal |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        fits = "yes" if r["total_gib"] <= r["goal_gib"] else "no"
        lines.append(f"| {r['size']} | {r['dtype']} | {r['option']} | {r['variant']} | "
                     f"{r['total_gib']:.2f} | {fits} ({r['goal_gib']:.0f}) |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from magicapture_pipeline.core.atomic import write_json, write_text  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/08_reporting", type=Path)
    parser.add_argument("--sizes", nargs="+", default=list(ms.REAL_SIZES))
    args = parser.parse_args(argv)
    result = measure(args.sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_memory.json", result)
    write_text(args.out / "bench_memory.md", render(result))
    sys.stdout.write(render(result))
    return result


if __name__ == "__main__":
    main()
