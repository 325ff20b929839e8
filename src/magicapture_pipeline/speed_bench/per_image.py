"""Per-image CPU figures: preprocessing, generation and evaluation."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np

from magicapture_pipeline.speed_bench.sizes import (
    build_model,
)

# --------------------------------------------------------------------------- per-image figures


def measure_preprocess(repeats: int = 20, workers: int | None = None) -> dict[str, Any]:
    """Images per second of detection + mesh + mask + crop on a decoded 512 px photo.

    ``preprocess_images_per_s``: the median of whole ``analyze_source`` calls in this process
    (the serial path, ``preprocess.workers: 1``); the breakdown times each of its parts alone
    (``core.faces.throughput.measure_stages``). ``preprocess_images_per_s_pool``: the same
    work plus the overlay and pHash in a pool of ``workers`` processes (default: the CPU
    count), 64 photos a pass, arrays sent both ways (``preprocess.workers: N``, issue 19 §5).
    """
    try:
        from skimage import data

        from magicapture_pipeline.core.faces.analysis import analyze_source
        from magicapture_pipeline.core.faces.detection import FaceAnalyzer
        from magicapture_pipeline.core.faces.throughput import measure_stages
    except ImportError as error:
        return {"preprocess_images_per_s": None, "reason": f"not measured: {error}"}
    rgb = data.astronaut()  # 512x512, decoded once: decode is excluded
    totals: list[float] = []
    with FaceAnalyzer() as analyzer:
        for index in range(repeats + 2):
            start = time.perf_counter()
            analyze_source(rgb, analyzer, resolution=512)
            if index >= 2:
                totals.append(time.perf_counter() - start)
    parts = measure_stages(rgb, resolution=512, repeats=repeats)
    parts.pop("analyze_source", None)  # timed above, as a whole
    workers = workers or os.cpu_count() or 1
    pool_rate = None
    if workers >= 2:
        from magicapture_pipeline.core.faces.throughput import measure_pool_throughput

        photos = [rgb, np.ascontiguousarray(rgb[:, ::-1])]
        found = measure_pool_throughput(photos, workers, resolution=512, copies=32)
        pool_rate = round(found["images_per_s"], 2)
    return {
        **measure_preprocess_demo(workers),
        "preprocess_images_per_s": round(1.0 / statistics.median(totals), 2),
        "preprocess_images_per_s_pool": pool_rate,
        "preprocess_workers": workers,
        "preprocess_breakdown_s": {
            "analyze_source": round(statistics.median(totals), 5),
            **{name: round(ms / 1e3, 5) for name, ms in parts.items()},
        },
    }


def measure_preprocess_demo(workers: int = 2, repeats: int = 3, copies: int = 16) -> dict[str, Any]:
    """Images per second of preprocessing's face stage (analysis, overlay, pHash) on the
    shipped demo photos (``core.faces.sample_data``: every source and reference image), serial
    and in a pool of ``workers`` processes (``preprocess.workers``; the pool's output is the
    serial path's byte for byte, ``tests/core/faces/test_pool.py``), with the machine's 1-minute
    load average before and after: other work on the cores lowers both rates.

    Serial: median of ``repeats`` passes over the photos after a warm-up pass, in this process.
    Pool: a warm pool (started once, the photos sent to each worker once), median of
    ``repeats`` passes of ``copies`` x the photos; its start-up is reported apart
    (``..._pool_startup_s``) and with it (``..._pool_images_per_s_with_startup``).

    The CPU milliseconds per image say what the work costs whatever the load: serial
    (``..._cpu_ms``), and in the pool the workers' whole processes (``..._pool_worker_cpu_ms``:
    analysis, task and result transport, mediapipe's threads; the analysis alone is
    ``..._pool_function_cpu_ms``) plus this process's (``..._pool_parent_cpu_ms``: submitting,
    copying the crops, masks and overlays out of shared memory).
    ``..._pool_cpu_bound_images_per_s`` = the rate those CPU milliseconds (worker + parent)
    allow on ``min(workers, cores)`` idle cores: a bound, not a measurement.
    """
    from magicapture_pipeline.core.faces.sample_data import (
        SOURCE_VARIANTS,
        _reference_subjects,
        build_sample_set,
    )
    from magicapture_pipeline.core.faces.throughput import (
        measure_pool_throughput,
        measure_throughput,
    )

    photos = [sample.pixels for sample in build_sample_set("source", len(SOURCE_VARIANTS))]
    photos += [s.pixels for s in build_sample_set("reference", len(_reference_subjects()))]
    load_before = os.getloadavg()[0]
    serial = measure_throughput(photos, resolution=512, repeats=repeats)
    load_serial = os.getloadavg()[0]
    result: dict[str, Any] = {
        "preprocess_demo_photos": len(photos),
        "preprocess_demo_images_per_s": round(serial["full"], 2),
        "preprocess_demo_cpu_ms": round(serial["full_cpu_ms"], 2),
        "preprocess_demo_images_per_s_pool": None,
    }
    if workers >= 2:
        pool = measure_pool_throughput(
            photos, workers, resolution=512, repeats=repeats, copies=copies
        )
        worker_ms = pool["worker_cpu_ms"]
        if worker_ms is None:  # no /proc: the analysis alone (transport not counted)
            worker_ms = pool["function_cpu_ms"]
        per_image = worker_ms + pool["parent_cpu_ms"]
        cores = min(workers, os.cpu_count() or 1)
        result.update({
            "preprocess_demo_images_per_s_pool": round(pool["images_per_s"], 2),
            "preprocess_demo_pool_photos_per_pass": pool["photos_per_pass"],
            "preprocess_demo_pool_startup_s": round(pool["startup_s"], 2),
            "preprocess_demo_pool_images_per_s_with_startup": round(
                pool["images_per_s_with_startup"], 2),
            "preprocess_demo_pool_worker_cpu_ms": round(worker_ms, 2),
            "preprocess_demo_pool_function_cpu_ms": round(pool["function_cpu_ms"], 2),
            "preprocess_demo_pool_parent_cpu_ms": round(pool["parent_cpu_ms"], 2),
            "preprocess_demo_pool_cpu_bound_images_per_s": round(1e3 * cores / per_image, 1),
        })  # fmt: skip
    result["preprocess_demo_load_1min"] = [
        round(load_before, 2), round(load_serial, 2), round(os.getloadavg()[0], 2)
    ]
    result["preprocess_demo_serial_cpu_bound_images_per_s"] = round(
        1e3 / serial["full_cpu_ms"], 1
    )
    return result


def measure_generation(steps: int = 20, repeats: int = 3) -> dict[str, Any]:
    """Seconds per generated image with the tiny model at the demo resolution."""
    try:
        from diffusers import StableDiffusionPipeline

        from magicapture_pipeline.core.generation.sampling import generate_images
    except ImportError as error:
        return {"generate_s_per_image": None, "reason": f"not measured: {error}"}
    model = build_model("tiny")
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=model.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    generate_images(pipe, [("{}", "a photo of a person")], images_per_prompt=1, seed=0,
                    num_inference_steps=steps, guidance_scale=7.5,
                    resolution=model.resolution, progress=False)  # fmt: skip
    images = generate_images(pipe, [("{}", "a photo of a person")], images_per_prompt=repeats,
                             seed=1, num_inference_steps=steps, guidance_scale=7.5,
                             resolution=model.resolution, progress=False)  # fmt: skip
    return {
        "generate_s_per_image": round(statistics.median(i.seconds for i in images), 4),
        "generate_setting": f"tiny model, {model.resolution} px, {steps} steps, CFG 7.5",
    }


def measure_evaluation(repeats: int = 5) -> dict[str, Any]:
    """Seconds per image of the identity metric (CSIM) with the offline dlib embedder."""
    try:
        from PIL import Image
        from skimage import data

        from magicapture_pipeline.core.evaluation.metrics import csim, load_identity_embedder
    except ImportError as error:
        return {"evaluate_s_per_image": None, "reason": f"not measured: {error}"}
    embedder, reason = load_identity_embedder("dlib", None)
    if embedder is None:
        return {"evaluate_s_per_image": None, "reason": f"not measured: {reason}"}
    image = Image.fromarray(data.astronaut())
    generated = {f"g{i}": image for i in range(repeats)}
    csim(embedder, {"warm": image}, [image])
    start = time.perf_counter()
    csim(embedder, generated, [image])
    per_image = (time.perf_counter() - start) / (repeats + 1)  # + the one source embedding
    return {
        "evaluate_s_per_image": round(per_image, 4),
        "evaluate_setting": "CSIM (dlib, offline) on 512 px images; CLIP style and aesthetic "
        "scores need weights that are not obtainable offline",
    }


if __name__ == "__main__":  # the preprocessing entry alone: python -m ...speed_bench.per_image
    import json
    import sys

    sys.stdout.write(json.dumps(measure_preprocess_demo(os.cpu_count() or 2), indent=2) + "\n")
