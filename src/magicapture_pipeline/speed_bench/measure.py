"""Timing: interleaved medians, profiles, the parts of a step, one size's figures."""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from typing import Any

import torch

from magicapture_pipeline.speed_bench.harness import (
    StepBench,
    _bench_landmarks,
)
from magicapture_pipeline.speed_bench.sizes import (
    COMPOSED_PROMPT,
    GOALS,
    ONE_STEP_NOTE,
    SIZES,
    BenchModel,
    SizeSpec,
    build_model,
)
from magicapture_pipeline.speed_bench.trainer_bench import (
    RATIOS,
    STAGE_ONE_FIGURES,
    STAGE_TWO_FIGURES,
    TRAINER_FIGURES,
    TrainerBench,
)


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock reads finished steps (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_medians(
    bench: Any, names: tuple[str, ...], repeats: int, warmup: int, warm_first_only: bool = False
) -> dict[str, float]:
    """Median seconds per step of each variant, run round-robin after warm-up.

    ``warm_first_only``: the warm-up rounds run the first variant only (one warm-up step per
    stage instead of one per variant; the one-step CPU sizes, issue 19 §5): a later variant's
    timed step then includes whatever its own first call costs beyond the shared model's.

    On CUDA each step is bracketed by ``torch.cuda.synchronize`` and the peak allocated GPU memory
    of each variant's last step goes to ``bench.peak_gpu_mb``.
    """
    device = bench.device
    on_gpu = device.type == "cuda"
    samples: dict[str, list[float]] = {name: [] for name in names}
    last = warmup + repeats - 1
    for round_index in range(warmup + repeats):
        for name in names[:1] if warm_first_only and round_index < warmup else names:
            step, context = bench.variant(name)
            with context:
                if on_gpu and round_index == last:
                    torch.cuda.reset_peak_memory_stats(device)
                _synchronize(device)
                start = time.perf_counter()
                step()
                _synchronize(device)
                elapsed = time.perf_counter() - start
                if on_gpu and round_index == last:
                    bench.peak_gpu_mb[name] = torch.cuda.max_memory_allocated(device) / 2**20
            if round_index >= warmup:
                samples[name].append(elapsed)
    bench.minimum.update({name: min(values) for name, values in samples.items()})
    return {name: statistics.median(values) for name, values in samples.items()}


def _profile(bench: Any, name: str, rows: int = 8) -> dict[str, Any]:
    """Wall time and the top operators of one profiled step of ``name``: by self CPU time on
    CPU, by self GPU (device) time on CUDA. A variant not timed yet gets a warm-up step first;
    one the timed rounds already ran (``bench.minimum`` has it) does not (issue 19 §5: at
    ``sd15_unet_256`` a step is ~10 s of CPU, and the timed rounds have warmed it)."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = bench.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    step, context = bench.variant(name)
    with context:
        if name not in bench.minimum:
            step()  # warm
        _synchronize(bench.device)
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            step()
            _synchronize(bench.device)
        wall = time.perf_counter() - start

    def self_us(event: Any) -> float:
        return float(event.self_device_time_total if on_gpu else event.self_cpu_time_total)

    events = sorted(prof.key_averages(), key=self_us, reverse=True)
    total = sum(self_us(e) for e in events) or 1.0
    top = [
        {
            "op": event.key,
            "self_cpu_s": round(self_us(event) / 1e6, 4),
            "share": round(self_us(event) / total, 3),
            "calls": event.count,
        }
        for event in events[:rows]
    ]
    return {
        "wall_s": round(wall, 4),
        "self_cpu_total_s": round(total / 1e6, 4),
        "clock": "self GPU time" if on_gpu else "self CPU time",
        "top": top,
    }


def _component_breakdown(
    model: BenchModel,
    encoder: Any,
    landmarks: torch.Tensor,
    repeats: int,
    tiny_decoder: Any = None,
    device: torch.device | None = None,
    mixed_precision: str = "no",
) -> dict[str, float]:
    """Median seconds of the parts a step is made of (each part alone, gradients as in a step,
    under the step's autocast on CUDA)."""
    device = device or torch.device("cpu")
    resolution = model.resolution
    generator = torch.Generator().manual_seed(1)
    pixels = (torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1).to(device)
    landmarks = landmarks.to(device)
    scaling = float(model.vae.config.scaling_factor)
    with torch.no_grad():
        latents = model.vae.encode(pixels).latent_dist.sample() * scaling
    latents.requires_grad_(True)
    image = pixels.clone().requires_grad_(True)
    ids = model.tokenizer(
        COMPOSED_PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    t = torch.tensor([500], device=device)
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=amp))
        if device.type == "cuda" and amp is not None
        else contextlib.nullcontext
    )
    # SDXL's VAE overflows in fp16: the trainers run it outside fp16 autocast, and so does this.
    vae_autocast = contextlib.nullcontext if model.family == "sdxl" else autocast

    def unet_fwd_bwd() -> None:
        with autocast():
            if model.text_encoder_2 is None:
                out = model.unet(latents, t, model.text_encoder(ids)[0]).sample
            else:
                from magicapture_pipeline.core.models import sdxl

                _, text, pooled = sdxl.encode_prompts(
                    (model.tokenizer, model.tokenizer_2),
                    (model.text_encoder, model.text_encoder_2),
                    [COMPOSED_PROMPT],
                    device,
                )
                added = sdxl.added_conditions(pooled, resolution, resolution)
                out = model.unet(latents, t, text, added_cond_kwargs=added).sample
        out.float().square().mean().backward()

    def vae_decode_fwd_bwd() -> None:
        with vae_autocast():
            out = model.vae.decode(latents / scaling).sample
        out.float().square().mean().backward()

    def tiny_decode_fwd_bwd() -> None:
        with autocast():
            out = tiny_decoder.decode(latents).sample
        out.float().square().mean().backward()

    def arcface_fwd_bwd() -> None:
        with autocast():
            out = encoder(image, landmarks)
        out.float().sum().backward()

    def vae_encode() -> None:
        with torch.no_grad(), vae_autocast():
            model.vae.encode(pixels).latent_dist.sample()

    parts = {
        "unet_fwd_bwd_s": unet_fwd_bwd,
        "vae_decode_fwd_bwd_s": vae_decode_fwd_bwd,
        "arcface_fwd_bwd_s": arcface_fwd_bwd,
        "vae_encode_s": vae_encode,
    }
    if tiny_decoder is not None:
        parts["tiny_decoder_fwd_bwd_s"] = tiny_decode_fwd_bwd
    samples: dict[str, list[float]] = {name: [] for name in parts}
    for round_index in range(1 + repeats):
        for name, part in parts.items():
            _synchronize(device)
            start = time.perf_counter()
            part()
            _synchronize(device)
            if round_index:
                samples[name].append(time.perf_counter() - start)
    encoders = [e for e in (model.text_encoder, model.text_encoder_2) if e is not None]
    for parameter in (*model.unet.parameters(), *(p for e in encoders for p in e.parameters())):
        parameter.grad = None
    return {name: round(statistics.median(values), 5) for name, values in samples.items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _figures(bench: Any, spec: SizeSpec) -> dict[str, float]:
    figures: dict[str, float] = {}
    if spec.stage_one:
        bench.setup_stage_one()
        figures.update(_interleaved_medians(bench, STAGE_ONE_FIGURES, spec.repeats, spec.warmup,
                                            spec.warm_first_only))  # fmt: skip
    bench.setup_stage_two()
    names = STAGE_TWO_FIGURES + (TRAINER_FIGURES if isinstance(bench, TrainerBench) else ())
    figures.update(_interleaved_medians(bench, names, spec.repeats, spec.warmup,
                                        spec.warm_first_only))  # fmt: skip
    return figures


def measure_size(
    name: str,
    profile_missed: bool = True,
    engine: str = "trainer",
    device: str = "cpu",
    mixed_precision: str = "no",
) -> dict[str, Any]:
    """Every step figure of one size, its ratios, peak memory and profiles of missed goals.

    Args:
        name: a key of :data:`SIZES`.
        profile_missed: profile both steps of every ratio that misses its goal.
        engine: ``trainer`` (the project's ``core.training`` trainers) or ``harness`` (the steps
            assembled here from the core functions, CPU only); when the trainers fail on CPU,
            the harness is used and the failure is recorded under ``engine_error``.
        device: ``cpu`` or ``cuda[:n]`` (trainer engine only).
        mixed_precision: ``no``/``fp16``/``bf16``, the trainers' accelerate mixed precision
            (CUDA only; CPU runs fp32 with the identity branch's own bf16 autocast).
    """
    spec = SIZES[name]
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and engine != "trainer":
        raise ValueError("--engine harness runs on CPU only; use the trainer engine on CUDA")
    started = time.perf_counter()
    engine_error = None
    if engine == "trainer":
        try:
            model = build_model(name)
            bench: Any = TrainerBench(model, spec.arcface_arch, device, mixed_precision)
            figures = _figures(bench, spec)
        except Exception as error:  # noqa: BLE001 - fall back to the harness, and say so
            if on_gpu or spec.family != "sd15":  # no harness for SDXL: show the real error
                raise
            engine_error = f"{type(error).__name__}: {error}"
            engine = "harness"
    if engine == "harness":
        model = build_model(name)
        bench = StepBench(model, spec.arcface_arch)
        figures = _figures(bench, spec)
    ratios = {
        key: figures[a] / figures[b]
        for key, (a, b) in RATIOS.items()
        if a in figures and b in figures
    }
    landmarks = _bench_landmarks(model.resolution)
    breakdown = _component_breakdown(
        model, bench.encoder, landmarks, spec.repeats, bench.tiny_decoder, bench.device,
        bench.mixed_precision,
    )  # fmt: skip
    profiles: dict[str, Any] = {}
    if profile_missed:
        missed = [key for key, goal in GOALS.items() if key in ratios and ratios[key] > goal]
        for key in missed:
            numerator, denominator = RATIOS[key]
            profiles[key] = {
                numerator: _profile(bench, numerator),
                denominator: _profile(bench, denominator),
            }
    result = {
        "size": name,
        "description": spec.description,
        "engine": engine,
        "resolution": spec.resolution,
        "arcface_arch": spec.arcface_arch,
        "repeats": spec.repeats,
        "warmup": spec.warmup,
        "timing_note": ONE_STEP_NOTE if spec.repeats == 1 else "",
        "capture_layers": bench.capture.layer_names if bench.capture else [],
        **{key: round(value, 5) for key, value in figures.items()},
        **{key: round(value, 4) for key, value in ratios.items()},
        "min_s": {key: round(value, 5) for key, value in bench.minimum.items()},
        "breakdown_s": breakdown,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "device": str(bench.device),
        "mixed_precision": bench.mixed_precision,
        "seconds_total": round(time.perf_counter() - started, 1),
        "model": model.info,
        "profiles": profiles,
    }
    if on_gpu:
        result["peak_gpu_mb"] = {k: round(v, 1) for k, v in bench.peak_gpu_mb.items()}
        result["peak_gpu_mb_max"] = round(torch.cuda.max_memory_allocated(bench.device) / 2**20, 1)
    if engine_error:
        result["engine_error"] = engine_error
    return result
