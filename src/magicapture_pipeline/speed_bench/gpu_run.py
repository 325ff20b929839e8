"""The GPU benchmark in one call (issue 19 §4): real-size steps timed on a lent GPU.

``scripts/gpu_bench.sh`` runs ``python -m magicapture_pipeline.speed_bench.gpu_run`` on the GPU
machine (Python 3.12, CUDA torch, no Kedro or MLflow, the diffusers wheels of ``make
gpu-bundle``). For SD 1.5 at 512 px and SDXL base at 1024 px with random weights, each step
variant of :data:`.flops.VARIANTS` (the same :func:`.flops.run_step`, on the real device instead
of the meta device, plus an AdamW step of the trained parameters) is timed (median after warm-up,
``torch.cuda.synchronize`` around each step), with its peak memory
(``torch.cuda.max_memory_allocated``) beside :mod:`.memory`'s estimate, its FLOPs counted on the
meta device (:func:`.flops.count_step`), the achieved TFLOP/s (FLOPs / time) and the utilisation
against the card's peak. A whole customization is extrapolated from the step times with
:func:`.flops.customization` (the same micro-step counts and Eq. 7 share as the FLOP table).

Imports only torch, diffusers, transformers, peft, pydantic (the recipes' step counts) and the
Kedro-free modules; ``--deadline-s`` bounds the whole run (variants past it are reported as
skipped) and results are written after every size. ``--dry`` runs tiny sizes on CPU, as a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from magicapture_pipeline.speed_bench import flops as fl
from magicapture_pipeline.speed_bench import memory as mem
from magicapture_pipeline.speed_bench import meta_step as ms

GIB = 1024**3
# dense bf16/fp16 tensor-core peaks, TFLOP/s (NVIDIA datasheets, SXM parts); matched by name
CARD_PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


_TINY_VAE = {"block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 8}
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2}  # fmt: skip
_TINY_UNET = {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8,
              "sample_size": 8}  # fmt: skip


def dry_sizes() -> dict[str, ms.RealSize]:
    """Tiny stand-ins with the two families' layouts at 64 px (8 x 8 latent, two UNet levels,
    Eq. 8 on the first level with cross-attention): what ``--dry`` runs on CPU in seconds."""
    from magicapture_pipeline.core.models.random_weights import SD15_UNET
    from magicapture_pipeline.core.models.sdxl import SDXL_UNET

    sd_unet = {**SD15_UNET, **_TINY_UNET, "cross_attention_dim": 32, "attention_head_dim": 8,
               "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
               "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}  # fmt: skip
    xl_unet = {**SDXL_UNET, **_TINY_UNET, "cross_attention_dim": 64, "attention_head_dim": (2, 4),
               "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
               "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
               "transformer_layers_per_block": (1, 1), "addition_time_embed_dim": 8,
               "projection_class_embeddings_input_dim": 6 * 8 + 32}  # fmt: skip
    text_2 = {**_TINY_TEXT, "projection_dim": 32}
    return {
        "sd15_dry": ms.RealSize("sd15", 64, sd_unet, _TINY_VAE, _TINY_TEXT, ar_resolution=8),
        "sdxl_dry": ms.RealSize("sdxl", 64, xl_unet, _TINY_VAE, _TINY_TEXT, text_2, 4),
    }


def card_peak(device: torch.device) -> tuple[str, float | None]:
    """The card's name and its dense 16-bit peak (None when unknown or on CPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in CARD_PEAKS.items() if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def time_variant(
    model: ms.MetaModel, variant: str, optimizer: torch.optim.Optimizer, repeats: tuple[int, int]
) -> dict[str, Any]:
    """Median seconds of one micro-step of ``variant`` + the optimiser step, and peak bytes."""
    warmup, timed = repeats
    stage = fl.VARIANTS[variant][0]
    seconds = []
    _peak_reset(model.device)
    for index in range(warmup + timed):
        _sync(model.device)
        start = time.perf_counter()
        with fl._stage(model, stage):
            fl.run_step(model, variant, ms.Tape())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(model.device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    return {"seconds": statistics.median(seconds), "peak_bytes": _peak(model.device)}


def time_generation(model: ms.MetaModel, repeats: tuple[int, int], steps: int = 50) -> float:
    """Seconds of one image: ``steps`` CFG UNet forwards (batch 2, each timed) + one decode."""
    tape = ms.Tape()

    def unet() -> None:
        with torch.no_grad():
            states, pooled = ms.encode_prompt(tape, model, batch=2)
            ms.unet_forward(tape, model, states, pooled, batch=2)
        tape.segments.clear()

    def decode() -> None:
        with torch.no_grad():
            model.vae.decode(model.tensor(1, 4, model.latent, model.latent).to(model.vae.dtype))

    found = []
    for fn in (unet, decode):
        times = []
        for index in range(sum(repeats)):
            _sync(model.device)
            start = time.perf_counter()
            fn()
            _sync(model.device)
            if index >= repeats[0]:
                times.append(time.perf_counter() - start)
        found.append(statistics.median(times))
    return steps * found[0] + found[1]


def measure_size(  # noqa: PLR0913
    name: str, size: ms.RealSize, device: torch.device, dtype: torch.dtype,
    repeats: tuple[int, int], deadline: float, arcface_arch: str,
) -> dict[str, Any]:  # fmt: skip
    """Every variant of one size: time, peak memory and its estimate, FLOPs, TFLOP/s."""
    meta = ms.build_meta_model(name, dtype=dtype, size=size, arcface_arch=arcface_arch)
    start = time.perf_counter()
    model = ms.build_meta_model(
        name, dtype=dtype, device=device, size=size, arcface_arch=arcface_arch
    )
    _sync(device)
    build_s = time.perf_counter() - start
    optimizer = torch.optim.AdamW(ms.trainable_parameters(model), lr=1e-4)
    _, peak = card_peak(device)
    flop_cache: dict[Any, Any] = {}  # the variants share most segments: each counted once
    steps: dict[str, Any] = {}
    for variant in fl.VARIANTS:
        if time.monotonic() > deadline:
            steps[variant] = {"skipped": "deadline"}
            continue
        try:
            row = time_variant(model, variant, optimizer, repeats)
        except torch.cuda.OutOfMemoryError:  # one variant too big for the card: keep the rest
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            steps[variant] = {"skipped": "out of memory"}
            continue
        row["flops"] = fl.count_step(meta, variant, flop_cache)["total"]
        row["tflops_per_s"] = row["flops"] / row["seconds"] / 1e12
        row["utilisation"] = row["tflops_per_s"] / peak if peak else None
        if variant in mem.VARIANTS:
            row["peak_estimate_bytes"] = mem.estimate(meta, variant)["total"]
        steps[variant] = row
    result: dict[str, Any] = {
        "resolution": size.resolution, "family": size.family, "build_s": build_s, "steps": steps,
    }  # fmt: skip
    if time.monotonic() > deadline:
        return result
    gen_s = time_generation(model, repeats)
    result["generation_one_image_s"] = gen_s
    times = {k: {"total": v["seconds"]} for k, v in steps.items() if "seconds" in v}
    result["customization"] = {}
    for recipe in ("paper", "official"):
        try:
            found = fl.customization(times, {"total": gen_s}, recipe)
        except KeyError as missing:
            result["customization"][recipe] = {"skipped": f"{missing} was not measured"}
            continue
        result["customization"][recipe] = {
            "stage_one_micro_steps": found["stage_one_micro_steps"],
            "stage_two_micro_steps": found["stage_two_micro_steps"],
            "eq7_share": found["eq7_share"],
            "seconds": found["flops"],  # customization() adds up whatever unit it is given
            "total_s": found["total_flops"],
        }
    return result


def render(result: dict[str, Any]) -> str:
    """The markdown of ``bench_gpu.json``."""
    lines = [f"# GPU benchmark at real size ({result['device']}, {result['dtype']})", ""]
    lines.append(result["note"])
    for size, data in result["sizes"].items():
        if "skipped" in data:
            lines += ["", f"## {size}: skipped ({data['skipped']})"]
            continue
        lines += ["", f"## {size} ({data['family']}, {data['resolution']} px)", ""]
        lines.append("| step | s | TFLOP | TFLOP/s | utilisation | peak GiB | estimate GiB |")
        lines.append("|---|---|---|---|---|---|---|")
        for variant, row in data["steps"].items():
            if "skipped" in row:
                lines.append(f"| {variant} | skipped ({row['skipped']}) | | | | | |")
                continue
            util = f"{row['utilisation']:.1%}" if row["utilisation"] is not None else "n/a"
            gib = f"{row['peak_bytes'] / GIB:.2f}" if row["peak_bytes"] is not None else "n/a"
            est = row.get("peak_estimate_bytes")
            lines.append(
                f"| {variant} | {row['seconds']:.4f} | {row['flops'] / 1e12:.3f} | "
                f"{row['tflops_per_s']:.1f} | {util} | {gib} | "
                + (f"{est / GIB:.2f} |" if est is not None else " |")
            )
        for recipe, c in data.get("customization", {}).items():
            if "skipped" in c:
                lines.append(f"\n{recipe}: not extrapolated ({c['skipped']})")
                continue
            s = c["seconds"]
            lines.append(
                f"\n{recipe}: stage one {s['stage_one']:.1f} s + stage two {s['stage_two']:.1f} s"
                f" + evaluation {s['evaluation']:.1f} s = **{c['total_s']:.1f} s** per concept"
                f" ({c['stage_one_micro_steps']} + {c['stage_two_micro_steps']} micro-steps)"
            )
    return "\n".join(lines) + "\n"


def _write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("bench_gpu.json", json.dumps(result, indent=2)),
        ("bench_gpu.md", render(result)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def versions() -> str:
    """The line ``scripts/gpu_bench.sh`` starts with: what the run imports, at which versions."""
    import diffusers
    import peft
    import transformers

    return (
        f"python {sys.version.split()[0]} torch {torch.__version__} cuda "
        f"{torch.cuda.is_available()} diffusers {diffusers.__version__} transformers "
        f"{transformers.__version__} peft {peft.__version__}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/08_reporting/bench_gpu", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--sizes", nargs="+", default=None, help="default: every real size")
    parser.add_argument("--repeats", type=int, nargs=2, default=(2, 5), help="warm-up, timed")
    parser.add_argument("--deadline-s", type=float, default=400.0, help="for the whole run")
    parser.add_argument("--dry", action="store_true", help="tiny sizes on CPU (a test)")
    args = parser.parse_args(argv)
    print(versions(), flush=True)  # noqa: T201
    deadline = time.monotonic() + args.deadline_s
    sizes = dry_sizes() if args.dry else ms.REAL_SIZES
    device = torch.device("cpu" if args.dry else args.device)
    dtype = torch.float32 if args.dry else getattr(torch, args.dtype)
    card, peak = card_peak(device)
    result: dict[str, Any] = {
        "device": card, "dtype": str(dtype).removeprefix("torch."), "card_peak_tflops": peak,
        "torch": torch.__version__, "python": sys.version.split()[0], "dry": args.dry,
        "note": "Random weights; one micro-step (batch 1) of each variant + AdamW on the trained "
        "parameters; median of the timed repeats after warm-up. TFLOP counted on the meta device "
        "(matmul, conv, attention); utilisation = TFLOP/s / the card's dense 16-bit peak. "
        "Estimate = speed_bench.memory (meta-device live bytes + weights, grads, AdamW).",
        "sizes": {},
    }  # fmt: skip
    start = time.perf_counter()
    for name in args.sizes or list(sizes):
        if time.monotonic() > deadline:
            result["sizes"][name] = {"skipped": "deadline"}
            break
        arcface = "r18" if args.dry else "r100"
        result["sizes"][name] = measure_size(
            name, sizes[name], device, dtype, tuple(args.repeats), deadline, arcface
        )
        result["seconds"] = round(time.perf_counter() - start, 1)
        _write(args.out, result)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _write(args.out, result)
    sys.stdout.write(render(result))
    return result


if __name__ == "__main__":
    main()
