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

from magicapture_pipeline.config.memory import MemoryConfig
from magicapture_pipeline.core.models.memory import apply_memory_options
from magicapture_pipeline.speed_bench import flops as fl
from magicapture_pipeline.speed_bench import meta_step as ms

GIB = 1024**3
VARIANTS = (fl.DEFAULT_STEP, "stage2_eq8_eq7_face_window_step", "stage2_authors_step")
GOALS_GIB = {"sd15_512": 12.0, "sdxl_1024": 24.0}
OPTIONS = ("none", "unet_ckpt", "unet_te_vae_ckpt", "all_ckpt_vae_tiles")  # as :func:`options`


def options(size: str) -> dict[str, MemoryConfig]:
    """The options estimated, cumulative in this order (``config.memory`` fields, applied by
    the trainers' own ``apply_memory_options``); tiles of half the latent side. Each row is
    totalled with the frozen weights in fp32 and in 16 bits (``frozen_weights_16bit``, which
    changes what is held, not the step's activations)."""
    latent = ms.REAL_SIZES[size].resolution // 8 if size in ms.REAL_SIZES else 8
    ckpt: dict[str, Any] = {"frozen_weights_16bit": False, "unet_gradient_checkpointing": True}
    every = {**ckpt, "text_encoder_gradient_checkpointing": True}
    every["vae_gradient_checkpointing"] = True
    return {
        "none": MemoryConfig(frozen_weights_16bit=False),
        "unet_ckpt": MemoryConfig(**ckpt),
        "unet_te_vae_ckpt": MemoryConfig(**every),
        "all_ckpt_vae_tiles": MemoryConfig(**every, vae_tile_latent=max(8, latent // 2)),
    }


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


def estimate(
    model: ms.MetaModel, variant: str, memory: MemoryConfig | None = None
) -> dict[str, Any]:
    """Peak bytes of one stage-two micro-step of ``variant`` on ``model`` (weights as built),
    after ``apply_memory_options(memory)`` (options only add: apply them in order)."""
    apply_memory_options(memory or MemoryConfig(), unet=model.unet,
                         text_encoders=model.text_encoders, vae=model.vae)  # fmt: skip
    for module in (model.unet, *model.text_encoders):
        module.train()  # as stage two trains them (transformers checkpoints only in training)
        for p in module.parameters():
            p.grad = None  # a previous estimate's gradients are not this step's
    counter = LiveBytes()
    try:
        with fl._stage(model, "two"), counter:
            fl.run_step(model, variant, ms.Tape())
    finally:
        for module in (model.unet, *model.text_encoders):
            module.eval()
    static = static_bytes(model)
    total = counter.peak + sum(static.values())
    return {"activations_peak": counter.peak, **static, "total": total}


def trainer_bytes(model: ms.MetaModel, variant: str, memory: MemoryConfig) -> dict[str, int]:
    """What the trainers hold beyond the activations: the weights and a bound on autocast's
    16-bit weight copies that autograd keeps for backward (each network held in fp32 that runs
    with a gradient under autocast and is not checkpointed).

    ``memory.frozen_weights_16bit`` off: every weight in fp32 (``load_components`` loads fp32;
    ``mixed_precision`` autocasts), copies of the UNet, the text encoders, and the VAE decoder
    + ArcFace when Eq. 7 runs. On (``core.models.memory.hold_frozen_weights``): the frozen
    UNet, text-encoder and VAE weights in ``model.dtype`` (2 bytes), trainable ones (LoRA,
    token tables) and ArcFace in fp32, SDXL's VAE in fp32 under fp16 (it runs outside
    autocast: no copies); the only copies left are ArcFace's."""
    eq7 = fl.VARIANTS[variant][2] is not None
    if memory.frozen_weights_16bit:
        vae_fp32 = model.size.family == "sdxl" and model.dtype == torch.float16
        held_16 = [model.unet, *model.text_encoders, *([] if vae_fp32 else [model.vae])]
        frozen_16 = sum(p.numel() for m in held_16 for p in m.parameters() if not p.requires_grad)
        every = sum(p.numel() for m in (model.unet, model.vae, model.arcface,
                                        *model.text_encoders) for p in m.parameters())  # fmt: skip
        weights = 2 * frozen_16 + 4 * (every - frozen_16)
        copies = 2 * sum(p.numel() for p in model.arcface.parameters()) if eq7 else 0
        return {"weights_fp32": weights, "autocast_copies_bound": copies}
    modules = (model.unet, model.vae, model.arcface, *model.text_encoders)
    weights = 4 * sum(p.numel() for m in modules for p in m.parameters())
    graph = [] if memory.unet_gradient_checkpointing else [model.unet]
    if not memory.text_encoder_gradient_checkpointing:
        graph += model.text_encoders
    if eq7:  # Eq. 7: decoder (+ ArcFace) in the graph
        graph += [model.arcface]
        graph += [] if memory.vae_gradient_checkpointing else [model.vae.decoder]
    copies = 2 * sum(p.numel() for m in graph for p in m.parameters() if not p.requires_grad)
    return {"weights_fp32": weights, "autocast_copies_bound": copies}


def _size_rows(
    size: str, dtypes: tuple[str, ...], chosen: tuple[str, ...], variants: tuple[str, ...]
) -> list[dict[str, Any]]:
    rows = []
    for name in dtypes:
        model = ms.build_meta_model(size, dtype=getattr(torch, name))
        for option, memory in options(size).items():
            if option not in chosen:
                continue
            for variant in variants:
                found = estimate(model, variant, memory)
                common = found["activations_peak"] + found["gradients"] + found["adam_moments"]
                held = trainer_bytes(model, variant, memory)  # frozen weights fp32
                total = common + held["weights_fp32"] + held["autocast_copies_bound"]
                half = trainer_bytes(model, variant, _frozen_16bit(memory))
                total_16 = common + half["weights_fp32"] + half["autocast_copies_bound"]
                rows.append({"size": size, "dtype": name, "option": option, "variant": variant,
                             "trainer_total_gib": round(total / GIB, 2),
                             "frozen_16bit_total_gib": round(total_16 / GIB, 2),
                             "frozen_16bit_weights": half["weights_fp32"],
                             "frozen_16bit_copies": half["autocast_copies_bound"],
                             "goal_gib": GOALS_GIB[size],
                             "estimate_total_gib": round(found["total"] / GIB, 2),
                             **found, **held, "trainer_total": total})  # fmt: skip
    return rows


def _frozen_16bit(memory: MemoryConfig) -> MemoryConfig:
    return memory.model_copy(update={"frozen_weights_16bit": True})


def _size_flops(
    size: str, chosen: tuple[str, ...], variants: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    """FLOPs of each option x variant (recomputation is what checkpointing costs)."""
    model = ms.build_meta_model(size)
    out: dict[str, dict[str, int]] = {}
    for option, memory in options(size).items():
        if option not in chosen:
            continue
        apply_memory_options(memory, unet=model.unet, text_encoders=model.text_encoders,
                             vae=model.vae)  # fmt: skip
        for module in (model.unet, *model.text_encoders):
            module.train()
        out[option] = {v: fl.count_step(model, v)["total"] for v in variants}
    return out


def _one_size(job: tuple[Any, ...]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    size, dtypes, chosen, variants = job
    return _size_rows(size, dtypes, chosen, variants), _size_flops(size, chosen, variants)


def measure(
    sizes: list[str],
    dtypes: tuple[str, ...] = ("float16", "bfloat16"),
    chosen: tuple[str, ...] = OPTIONS,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Every size x dtype x option (cumulative, :func:`options`; ``chosen`` of them) x variant
    (``variants``), one process per size, and each option's FLOPs."""
    import multiprocessing

    jobs = [(size, dtypes, tuple(chosen), tuple(variants)) for size in sizes]
    with multiprocessing.get_context("fork").Pool(max(1, min(2, len(jobs)))) as pool:
        found = pool.map(_one_size, jobs)
    rows = [row for size_rows, _ in found for row in size_rows]
    flops = {size: f for size, (_, f) in zip(sizes, found, strict=True)}
    for row in rows:
        row["step_tflop"] = round(flops[row["size"]][row["option"]][row["variant"]] / 1e12, 3)
    return {"rows": rows, "flops": flops}


def render(result: dict[str, Any]) -> str:
    """The markdown of ``bench_memory.json``."""
    lines = [
        "# Peak training memory per stage-two micro-step at real size (GiB, meta-device estimate)",
        "",
        "activations = live-bytes peak of the step run with 16-bit weights (autocast's 16-bit "
        "activations); weights = every weight in fp32 as the trainers hold them with "
        "frozen_weights_16bit off; copies = bound on autocast's 16-bit weight copies kept for "
        "backward; total = the sum + LoRA/token gradients + AdamW moments. 16-bit frozen: the "
        "same with frozen_weights_16bit on (frozen UNet/text encoders/VAE in 16 bits, LoRA, "
        "token tables and ArcFace fp32, SDXL's VAE fp32 under fp16). Options are cumulative "
        "(config.memory). TFLOP = the step's work with the option (recomputation included).",
        "",
        "| size | dtype | option | variant | activations | weights | copies | total | fits "
        "| 16-bit frozen: weights | copies | total | fits | TFLOP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        fits = "yes" if r["trainer_total_gib"] <= r["goal_gib"] else "no"
        fits_16 = "yes" if r["frozen_16bit_total_gib"] <= r["goal_gib"] else "no"
        lines.append(
            f"| {r['size']} | {r['dtype']} | {r['option']} | {r['variant']} | "
            f"{r['activations_peak'] / GIB:.2f} | {r['weights_fp32'] / GIB:.2f} | "
            f"{r['autocast_copies_bound'] / GIB:.2f} | {r['trainer_total_gib']:.2f} | "
            f"{fits} ({r['goal_gib']:.0f}) | {r['frozen_16bit_weights'] / GIB:.2f} | "
            f"{r['frozen_16bit_copies'] / GIB:.2f} | {r['frozen_16bit_total_gib']:.2f} | "
            f"{fits_16} | {r['step_tflop']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from magicapture_pipeline.core.atomic import write_json, write_text  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/08_reporting", type=Path)
    parser.add_argument("--sizes", nargs="+", default=list(ms.REAL_SIZES))
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS,
                        help="cumulative memory options to estimate (default: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="step variants to estimate (default: all)")
    args = parser.parse_args(argv)
    result = measure(args.sizes, chosen=tuple(args.options), variants=tuple(args.variants))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_memory.json", result)
    write_text(args.out / "bench_memory.md", render(result))
    sys.stdout.write(render(result))
    return result


if __name__ == "__main__":
    main()
