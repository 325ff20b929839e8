"""The report (``bench.json``, ``bench.md``) and the command line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from magicapture_pipeline.speed_bench.measure import (
    measure_size,
)
from magicapture_pipeline.speed_bench.per_image import (
    measure_evaluation,
    measure_generation,
    measure_preprocess,
)
from magicapture_pipeline.speed_bench.sizes import (
    GOALS,
    ONE_STEP_NOTE,
    PREPROCESS_GOAL,
    REPORT_DIR,
    SIZES,
    default_sizes,
)
from magicapture_pipeline.speed_bench.trainer_bench import (
    RATIOS,
    STAGE_ONE_FIGURES,
    STAGE_TWO_FIGURES,
    TRAINER_FIGURES,
)

# --------------------------------------------------------------------------- report


def _environment(device: str = "cpu", mixed_precision: str = "no") -> dict[str, Any]:
    import diffusers

    on_gpu = torch.device(device).type == "cuda"
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(torch.device(device)) if on_gpu else "cpu",
        "torch_device": device,
        "mixed_precision": mixed_precision if on_gpu else "no",
        "cuda": torch.version.cuda if on_gpu else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _run_size_in_child(
    name: str, profile: bool, engine: str, device: str = "cpu", mixed_precision: str = "no"
) -> dict[str, Any]:
    """Measure one size in a fresh interpreter so its peak RSS is its own."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [
        sys.executable,
        "-m",
        "magicapture_pipeline.speed_bench",
        "--child",
        name,
        "--child-out",
        str(out),
        "--engine",
        engine,
        "--device",
        device,
        "--mixed-precision",
        mixed_precision,
    ]
    command += [] if profile else ["--no-profile"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"size": name, "error": f"not measured: child failed: {' | '.join(tail)}"}
    result = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    return result


def _markdown(report: dict[str, Any]) -> str:
    sizes = report["sizes"]
    names = list(sizes)
    env = report["environment"]
    precision = env.get("mixed_precision", "no")
    where = (
        f"{env['device']} (CUDA {env.get('cuda')}, mixed precision {precision})"
        if env.get("cuda")
        else f"{env['device']} · {env['torch_threads']} thread(s)"
    )
    lines = [
        "# MagiCapture step benchmark",
        "",
        f"{env['date_utc']} · torch {env['torch']} · {where}."
        " Median seconds per optimiser step (batch 1; the one timed step where a size times"
        " one); ratios of medians of the same run.",
        "",
        "| figure | " + " | ".join(names) + " | goal |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    keys = [*STAGE_ONE_FIGURES, *STAGE_TWO_FIGURES, *TRAINER_FIGURES, *RATIOS, "peak_rss_mb"]
    for key in keys:
        cells = []
        for name in names:
            value = sizes[name].get(key)
            cells.append("-" if value is None else f"{value:g}")
        goal = f"<= {GOALS[key]}" if key in GOALS else ""
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {goal} |")
    if any("peak_gpu_mb" in sizes[n] for n in names):
        lines += ["", "Peak allocated GPU memory of one step (MiB):", ""]
        lines += ["| step | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key in (*STAGE_ONE_FIGURES, *STAGE_TWO_FIGURES, *TRAINER_FIGURES):
            cells = [f"{sizes[n].get('peak_gpu_mb', {}).get(key, '-')}" for n in names]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Parts of a step, each alone (median s):", ""]
    lines += ["| part | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    parts = ("unet_fwd_bwd_s", "vae_decode_fwd_bwd_s", "tiny_decoder_fwd_bwd_s",
             "arcface_fwd_bwd_s", "vae_encode_s")  # fmt: skip
    for key in parts:
        cells = [f"{sizes[n].get('breakdown_s', {}).get(key, '-')}" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "| per-image figure (CPU) | value |", "|---|---|"]
    for key in ("preprocess_images_per_s", "preprocess_images_per_s_pool",
                "preprocess_demo_images_per_s", "preprocess_demo_images_per_s_pool",
                "generate_s_per_image", "evaluate_s_per_image"):  # fmt: skip
        value = report.get(key)
        shown = report.get("not_measured", {}).get(key, "-") if value is None else f"{value:g}"
        lines.append(f"| {key} | {shown} |")
    lines += ["", "## Sizes", ""]
    for name in names:
        size = sizes[name]
        if "error" in size:
            lines.append(f"- **{name}**: {size['error']}")
            continue
        engine = size.get("engine", "?")
        if size.get("engine_error"):
            engine += f" (trainers failed: {size['engine_error']})"
        lines.append(
            f"- **{name}**: {size['description']}; parameters (M) {size['model']['parameters_m']};"
            f" ArcFace {size['arcface_arch']}; AR capture {size['capture_layers']}; steps timed "
            f"with: {engine}; {size.get('repeats')} timed rounds after {size.get('warmup')} "
            "warm-up" + (f" ({size['timing_note']})." if size.get("timing_note") else ".")
        )
    lines += [
        "",
        "Notes: identity figures are the cost of a step in which Eq. 7 runs (t < T' forced); in"
        " training it runs only on composed micro-batches with t < T'. `id_single_pass` and"
        " `id_two_pass` use the speed options: VAE decode of the face's latent window only"
        " (`identity.decode_region: face_window`) and decode + ArcFace under bfloat16 autocast"
        " (`identity.autocast_dtype: bf16`); `window_fp32` is the window without autocast, `full`"
        " the whole-image fp32 decode (paper and authors' code; the default), `tiny_decoder`"
        " the speed options with TAESD decoding the window (`identity.decoder: tiny_autoencoder`;"
        " random weights of TAESD's architecture, so its cost, not its quality)."
        " `stage2_authors` is a stage-two step done the authors' way (every attention layer's"
        " maps stored per head, Eq. 8 scaled per map, a second UNet pass for Eq. 7, full fp32"
        " decode) and `stage2_default` this project's default step (Eq. 8 at one resolution,"
        " Eq. 7 from the training forward, full decode under bf16), timed in alternation on the"
        " same trainer; their ratio is `stage2_authors_over_default`. Ratios under"
        " ~1.2 move by several percent between runs on a shared 2-core machine.",
    ]
    for name in names:
        for ratio, tables in sizes[name].get("profiles", {}).items():
            lines += ["", f"## Profile: {name}, {ratio} missed", ""]
            for figure, table in tables.items():
                clock = table.get("clock", "self CPU time")
                lines += [
                    f"`{figure}`: profiled step {table['wall_s']} s ({clock} total "
                    f"{table['self_cpu_total_s']} s); top ops by {clock}:",
                    "",
                    "| op | s | share |",
                    "|---|---|---|",
                ]
                lines += [f"| {r['op']} | {r['self_cpu_s']} | {r['share']} |" for r in table["top"]]
                lines.append("")
    return "\n".join(lines) + "\n"


class _PartClock:
    """Wall and CPU seconds of one part of the benchmark (CPU: this process and the children
    that ended meanwhile, i.e. a size's process or a preprocessing pool), recorded in ``parts``
    and printed: on a shared machine the CPU seconds say what the part costs, the wall seconds
    what it took under that load."""

    def __init__(self, parts: dict[str, dict[str, float]], name: str) -> None:
        self.parts, self.name = parts, name

    @staticmethod
    def _cpu() -> float:
        import resource

        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        return total

    def __enter__(self) -> _PartClock:
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu
        self.parts[self.name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        load = os.getloadavg()[0]
        print(f"[bench] {self.name}: {wall:.0f} s wall, {cpu:.0f} s CPU "  # noqa: T201
              f"(1-min load {load:.1f})", flush=True)


def run(
    sizes: list[str],
    out_dir: Path,
    profile: bool = True,
    engine: str = "trainer",
    device: str = "cpu",
    mixed_precision: str = "no",
) -> dict[str, Any]:
    """Measure every size (each in its own process) and the per-image figures; write reports.

    The per-image figures (preprocess, generation, evaluation) are CPU figures on any device.
    ``bench_wall_s``: how long the whole benchmark took (issue 19 §5: ``make bench`` says it).
    """
    started = time.perf_counter()
    report: dict[str, Any] = {
        "environment": _environment(device, mixed_precision),
        "goals": GOALS,
        "sizes": {},
    }
    parts: dict[str, dict[str, float]] = {}
    for name in sizes:
        spec = SIZES[name]
        rounds = f"{spec.warmup} warm-up + {spec.repeats} timed step(s) per variant"
        if spec.repeats == 1:
            rounds = ONE_STEP_NOTE
        print(f"[bench] size {name} ({rounds}) ...", flush=True)  # noqa: T201 - CLI progress
        with _PartClock(parts, f"size {name}"):
            report["sizes"][name] = _run_size_in_child(
                name, profile, engine, device, mixed_precision
            )
    not_measured: dict[str, str] = {}
    for measure in (measure_preprocess, measure_generation, measure_evaluation):
        print(f"[bench] {measure.__name__} ...", flush=True)  # noqa: T201
        try:
            with _PartClock(parts, measure.__name__):
                result = measure()
        except Exception as error:  # noqa: BLE001 - a figure that fails is reported, not fatal
            key = {"measure_preprocess": "preprocess_images_per_s",
                   "measure_generation": "generate_s_per_image",
                   "measure_evaluation": "evaluate_s_per_image"}[measure.__name__]  # fmt: skip
            result = {key: None, "reason": f"not measured: {type(error).__name__}: {error}"}
        reason = result.pop("reason", None)
        for key, value in result.items():
            report[key] = value
            if value is None and reason:
                not_measured[key] = reason
    headline = next((n for n in reversed(sizes) if "error" not in report["sizes"][n]), None)
    if headline:
        report["headline_size"] = headline
        for key in (*STAGE_ONE_FIGURES, *STAGE_TWO_FIGURES, *RATIOS):
            if key in report["sizes"][headline]:
                report[key] = report["sizes"][headline][key]
    report["peak_rss_mb"] = {n: s.get("peak_rss_mb") for n, s in report["sizes"].items()}
    if torch.device(device).type == "cuda":
        report["peak_gpu_mb"] = {n: s.get("peak_gpu_mb_max") for n, s in report["sizes"].items()}
    rates = [report.get(k) for k in ("preprocess_demo_images_per_s",
                                     "preprocess_demo_images_per_s_pool")]  # fmt: skip
    if any(rate is not None for rate in rates):  # met by either path (preprocess.workers)
        report["preprocess_goal_met"] = max(r for r in rates if r is not None) >= PREPROCESS_GOAL
    report["goals_met"] = {
        name: {k: s[k] <= g for k, g in GOALS.items() if k in s}
        for name, s in report["sizes"].items()
    }
    report["not_measured"] = not_measured
    report["bench_parts_s"] = parts
    report["bench_wall_s"] = round(time.perf_counter() - started, 1)
    report["bench_cpu_s"] = round(sum(part["cpu_s"] for part in parts.values()), 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench.md").write_text(_markdown(report))
    return report


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m magicapture_pipeline.speed_bench [--sizes a,b] [--out DIR]``."""
    import magicapture_pipeline.speed_bench as package

    parser = argparse.ArgumentParser(
        prog="python -m magicapture_pipeline.speed_bench",
        description=(package.__doc__ or "").splitlines()[0],
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated sizes of {sorted(SIZES)}; default: every size on CUDA, all but "
        "the GPU-only ones on CPU",
    )
    parser.add_argument("--out", default=str(REPORT_DIR), help="folder of bench.json / bench.md")
    parser.add_argument("--no-profile", action="store_true", help="skip profiles of missed goals")
    parser.add_argument(
        "--engine",
        choices=("trainer", "harness"),
        default="trainer",
        help="time core.training's trainers (default) or the steps assembled in this module",
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:n]")
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default="no",
        help="the trainers' mixed precision on CUDA (the paper's recipe: fp16); ignored on CPU",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = measure_size(
            args.child,
            profile_missed=not args.no_profile,
            engine=args.engine,
            device=args.device,
            mixed_precision=args.mixed_precision,
        )
        Path(args.child_out).write_text(json.dumps(result))
        return
    on_gpu = torch.device(args.device).type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: this torch build ({torch.__version__}) sees no CUDA device;"
            " on a GPU machine install a CUDA build of the same torch (constraints.txt pins the"
            " CPU build): pip install --force-reinstall torch==" + torch.__version__.split("+")[0]
        )
    if on_gpu and args.engine != "trainer":
        parser.error("--engine harness runs on CPU only")
    chosen = args.sizes or ",".join(default_sizes(args.device))
    sizes = [s for s in chosen.split(",") if s]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    run(
        sizes,
        Path(args.out),
        profile=not args.no_profile,
        engine=args.engine,
        device=args.device,
        mixed_precision=args.mixed_precision,
    )
    print((Path(args.out) / "bench.md").read_text())  # noqa: T201
    report = json.loads((Path(args.out) / "bench.json").read_text())
    took, cpu = report["bench_wall_s"], report["bench_cpu_s"]
    print(f"[bench] took {took:.0f} s ({took / 60:.1f} min) wall, {cpu:.0f} s CPU "  # noqa: T201
          f"(1-min load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
