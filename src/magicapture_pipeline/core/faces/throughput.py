"""How fast the face stage runs: images per second, and the milliseconds of each part."""

from __future__ import annotations

from typing import Any

import numpy as np

from magicapture_pipeline.core import procfs
from magicapture_pipeline.core.faces.analysis import analyze_source
from magicapture_pipeline.core.faces.crops import crop_resize, detection_in_crop, square_box_around
from magicapture_pipeline.core.faces.detection import FaceAnalyzer
from magicapture_pipeline.core.faces.masks import face_mask, latent_mask
from magicapture_pipeline.core.faces.overlays import overlay
from magicapture_pipeline.core.faces.quality import phash, sharpness


def measure_throughput(
    images: list[np.ndarray], resolution: int = 512, repeats: int = 5
) -> dict[str, float]:
    """Images per second of the face stage on decoded images (decoding excluded), and the CPU
    milliseconds per image of the same passes (``<path>_cpu_ms``: what the work costs whatever
    else runs on the machine).

    ``detect_mesh_mask``: detection, square crop, mesh and image + latent masks (the path of
    :func:`analyze_source`); ``full``: everything :func:`analyze_source` does, plus the overlay
    and the pHash preprocessing adds per image. Both reuse one :class:`FaceAnalyzer`, as
    preprocessing does; a first pass warms it up, then each figure is the median over
    ``repeats`` timed passes (robust to other work on the machine).
    """
    import statistics
    import time

    def core(rgb: np.ndarray, analyzer: FaceAnalyzer) -> None:
        found = analyzer.detect(rgb)
        if not found:
            return
        crop_box = square_box_around(found[0].box, rgb.shape[1], rgb.shape[0], 2.2)
        crop = crop_resize(rgb, crop_box, resolution)
        points = analyzer.mesh_at(crop, detection_in_crop(found[0], crop_box, resolution))
        if points is not None:
            latent_mask(face_mask(points, resolution))

    def full(rgb: np.ndarray, analyzer: FaceAnalyzer) -> None:
        _ = analyze_source(rgb, analyzer, resolution).overlay
        phash(rgb)

    rates = {}
    with FaceAnalyzer() as analyzer:
        for name, step in (("detect_mesh_mask", core), ("full", full)):
            for rgb in images:
                step(rgb, analyzer)
            passes, cpu = [], []
            for _ in range(max(1, repeats)):
                start, cpu_start = time.perf_counter(), time.process_time()
                for rgb in images:
                    step(rgb, analyzer)
                passes.append(time.perf_counter() - start)
                cpu.append(time.process_time() - cpu_start)
            rates[name] = len(images) / statistics.median(passes)
            rates[f"{name}_cpu_ms"] = 1e3 * statistics.median(cpu) / len(images)
    return rates


def measure_stages(
    rgb: np.ndarray, resolution: int = 512, repeats: int = 30
) -> dict[str, float]:
    """Median milliseconds of each part of :func:`analyze_source` on one decoded image.

    Keys: ``detect``, ``crop``, ``mesh`` (on the crop, from the detection), ``mask`` (image +
    latent mask), ``sharpness``, ``analyze_source`` (all of it), and the reporting extras
    ``overlay`` and ``phash``. For finding where the time goes; the image needs a face.
    """
    import statistics
    import time

    def median_ms(step: Any) -> float:
        step()
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    height, width = rgb.shape[:2]
    with FaceAnalyzer() as analyzer:
        found = analyzer.detect(rgb)
        if not found:
            raise ValueError("measure_stages needs an image with a face")
        crop_box = square_box_around(found[0].box, width, height, 2.2)
        crop = crop_resize(rgb, crop_box, resolution)
        in_crop = detection_in_crop(found[0], crop_box, resolution)
        points = analyzer.mesh_at(crop, in_crop)
        if points is None:
            raise ValueError("measure_stages needs an image the mesh finds a face in")
        mask = face_mask(points, resolution)
        result = analyze_source(rgb, analyzer, resolution)
        options = result.overlay_options
        return {
            "detect": median_ms(lambda: analyzer.detect(rgb)),
            "crop": median_ms(lambda: crop_resize(rgb, crop_box, resolution)),
            "mesh": median_ms(lambda: analyzer.mesh_at(crop, in_crop)),
            "mask": median_ms(lambda: latent_mask(face_mask(points, resolution))),
            "sharpness": median_ms(lambda: sharpness(crop)),
            "analyze_source": median_ms(lambda: analyze_source(rgb, analyzer, resolution)),
            "overlay": median_ms(lambda: overlay(crop, mask, **options)),
            "phash": median_ms(lambda: phash(rgb)),
        }


def _full_in_worker(rgb: np.ndarray, resolution: int, analyzer: FaceAnalyzer, _: Any) -> tuple:
    """What preprocessing computes per photo in a pool worker, returned to the parent (the
    arrays travel back as they do in :func:`~.image_set.analyze_image_set`)."""
    result = analyze_source(rgb, analyzer, resolution)
    return result.crop, result.mask, result.latent_mask, result.overlay, phash(rgb)


def _timed_in_worker(index: int, resolution: int, analyzer: FaceAnalyzer, _: Any) -> tuple:
    """:func:`_full_in_worker` on the worker's preloaded photo ``index``, and the CPU seconds
    the function took in the worker (its process, all threads)."""
    import time

    from magicapture_pipeline.core.faces.pool import preloaded

    start = time.process_time()
    result = _full_in_worker(preloaded("photos")[index], resolution, analyzer, None)
    return result, time.process_time() - start


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux ``/proc``;
    None elsewhere). 10 ms ticks: read it around passes of seconds, not around one image."""
    return procfs.cpu_seconds(pid)


def measure_pool_throughput(
    images: list[np.ndarray], workers: int, resolution: int = 512, repeats: int = 3,
    copies: int = 1,
) -> dict[str, float | None]:
    """Images per second of the ``full`` path (see :func:`measure_throughput`) run by a warm
    :class:`~.pool.FacePool` of ``workers`` processes: ``images`` are sent to each worker once,
    at start-up (``preload``); each task names a photo, and the crops, masks and overlays come
    back to this process (through shared memory, as in preprocessing). A pass is ``copies``
    rounds over ``images``.

    Returns:
        ``startup_s``: from creating the pool until a first batch of ``2 x workers`` photos
        came back (spawn, imports, mediapipe graphs, the photos sent once, the first images).
        ``images_per_s``: photos per wall second of the median of ``repeats`` passes of the
        warm pool (start-up excluded). ``images_per_s_with_startup``: every photo of every
        pass over start-up + every pass (what a run of that many photos would see).
        ``worker_cpu_ms``: the workers' whole-process CPU per photo during that pass (the
        analysis plus receiving tasks, packing results and mediapipe's threads; None without
        ``/proc``); ``function_cpu_ms``: the analysis alone, timed inside the function;
        ``parent_cpu_ms``: this process (submitting, copying the arrays out).
    """
    import time

    from magicapture_pipeline.core.faces.pool import FacePool

    tasks = [(index, resolution) for index in range(len(images))] * max(1, copies)
    warm = [(index % len(images), resolution) for index in range(2 * workers)]
    passes = []
    started = time.perf_counter()
    with FacePool(workers, preload={"photos": images}) as pool:
        list(pool.map(_timed_in_worker, warm))  # every worker built and used
        startup = time.perf_counter() - started
        pids = pool.worker_pids()
        for _ in range(max(1, repeats)):
            before = [process_cpu_s(pid) for pid in pids]
            start, parent = time.perf_counter(), time.process_time()
            done = list(pool.map(_timed_in_worker, tasks))
            wall, parent = time.perf_counter() - start, time.process_time() - parent
            after = [process_cpu_s(pid) for pid in pids]
            whole = None
            if None not in before and None not in after:
                whole = sum(b - a for a, b in zip(before, after, strict=True))  # type: ignore
            passes.append((wall, sum(cpu for _, cpu in done), parent, whole))
    median = sorted(passes, key=lambda found: found[0])[len(passes) // 2]
    wall, function_cpu, parent_cpu, worker_cpu = median
    count = len(tasks)
    return {
        "startup_s": startup,
        "images_per_s": count / wall,
        "images_per_s_with_startup": count * len(passes) / (startup + sum(p[0] for p in passes)),
        "photos_per_pass": count,
        "worker_cpu_ms": None if worker_cpu is None else 1e3 * worker_cpu / count,
        "function_cpu_ms": 1e3 * function_cpu / count,
        "parent_cpu_ms": 1e3 * parent_cpu / count,
    }
