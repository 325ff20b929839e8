"""The face stage in a process pool: each worker holds its own detector, mesh and embedder.

Issue 19 §5. mediapipe's graphs run one image at a time and hold the GIL for much of it, so
threads do not help; processes do. Workers are started with ``spawn`` (never ``fork``: the
parent may hold torch's or mediapipe's threads, which a forked child would inherit locked).
Results come back in submission order, so the output is the serial path's, byte for byte
(``tests/core/faces/test_pool.py`` checks it on the demo photos).

Arrays of at least :data:`SHARED_MIN_BYTES` in a result (crops, masks, overlays: ~1.8 MB per
512 px photo) come back through one POSIX shared-memory block per chunk of tasks instead of the
result pipe: pickling them in the worker, the pipe and unpickling them in the parent cost
~9 ms CPU per photo in the worker alone (its whole-process CPU was 24-29 ms per photo against
15-18 ms in the function, measured at load ~20), a shared-memory copy is ~0.3 ms. The parent
copies each array out and unlinks the block as soon as it reads the chunk. Where shared memory
cannot be created (``OSError``, e.g. a small ``/dev/shm``), the chunk travels pickled as before.
Inputs that every task reads (the benchmark's photos) can be sent once per worker with
``preload`` and read there with :func:`preloaded`, instead of once per task.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

SHARED_MIN_BYTES = 64 * 1024  # smaller arrays are cheaper to pickle than to map
_ALIGN = 64

# One worker's state: built once by the initializer, used by every task the worker runs.
_STATE: dict[str, Any] = {}


def _init_worker(analyzer_args: tuple[Any, ...], embed: bool, preload: dict[str, Any]) -> None:
    import os

    from magicapture_pipeline.core.faces.detection import FaceAnalyzer

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    analyzer = FaceAnalyzer(*analyzer_args)
    analyzer.__enter__()
    _STATE["analyzer"] = analyzer
    _STATE["preload"] = preload
    if embed:
        from magicapture_pipeline.core.identity.embedders import DlibFaceEmbedder

        _STATE["embedder"] = DlibFaceEmbedder()


def preloaded(key: str) -> Any:
    """In a worker: the value the pool was given as ``preload[key]`` (sent once per worker)."""
    return _STATE["preload"][key]


@dataclass(frozen=True)
class _Slot:
    """Where one array of a packed result lies in its chunk's shared-memory block."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


def _pack(results: list[Any]) -> tuple[str | None, list[Any]]:
    """``results`` with every large array moved into one new shared-memory block: the block's
    name (None when nothing was moved) and the results with :class:`_Slot` in their place.
    Tuples, lists and dicts are walked; any other object travels pickled as it is."""
    arrays: list[np.ndarray] = []
    offsets: list[int] = []
    size = 0

    def walk(value: Any) -> Any:
        nonlocal size
        if (type(value) is np.ndarray and value.nbytes >= SHARED_MIN_BYTES
                and not value.dtype.hasobject):  # fmt: skip
            arrays.append(value)
            offsets.append(size)
            size += -(-value.nbytes // _ALIGN) * _ALIGN
            return _Slot(offsets[-1], value.shape, value.dtype.str)
        if type(value) is tuple:
            return tuple(walk(item) for item in value)
        if type(value) is list:
            return [walk(item) for item in value]
        if type(value) is dict:
            return {key: walk(item) for key, item in value.items()}
        return value

    packed = walk(results)
    if not arrays:
        return None, results
    try:
        block = shared_memory.SharedMemory(create=True, size=size)
    except OSError:  # no room in /dev/shm: the pipe, as before
        return None, results
    try:
        for array, offset in zip(arrays, offsets, strict=True):
            target = np.ndarray(array.shape, array.dtype, buffer=block.buf, offset=offset)
            target[...] = array
            del target
    except BaseException:
        block.close()
        block.unlink()
        raise
    block.close()  # the parent unlinks it once it has copied the arrays out
    return block.name, packed


def _unpack(name: str | None, packed: list[Any]) -> list[Any]:
    """The results :func:`_pack` packed, every array copied out of the block, which is then
    unlinked (so nothing stays in ``/dev/shm``)."""
    if name is None:
        return packed
    block = shared_memory.SharedMemory(name=name)
    try:

        def walk(value: Any) -> Any:
            if isinstance(value, _Slot):
                view = np.ndarray(value.shape, np.dtype(value.dtype), buffer=block.buf,
                                  offset=value.offset)  # fmt: skip
                return view.copy()
            if type(value) is tuple:
                return tuple(walk(item) for item in value)
            if type(value) is list:
                return [walk(item) for item in value]
            if type(value) is dict:
                return {key: walk(item) for key, item in value.items()}
            return value

        return walk(packed)
    finally:
        block.close()
        block.unlink()


def _run_chunk(
    function: Callable[..., Any], chunk: list[tuple[Any, ...]]
) -> tuple[str | None, list[Any]]:
    results = [function(*args, _STATE["analyzer"], _STATE.get("embedder")) for args in chunk]
    return _pack(results)


def _discard(future: Future) -> None:
    """Unlink the block of a chunk whose results nobody will read (the map was abandoned)."""
    if future.cancelled() or future.exception() is not None:
        return
    _unpack(*future.result())


class FacePool:
    """``workers`` processes, each with a :class:`FaceAnalyzer` built from ``analyzer_args``
    (and a dlib embedder when ``embed``), mapping module-level functions over inputs in order.

    Each function is called as ``function(*args, analyzer, embedder)`` in a worker. ``preload``
    is sent to each worker once, at start-up (:func:`preloaded` reads it there).
    """

    def __init__(
        self,
        workers: int,
        analyzer_args: tuple[Any, ...] = (),
        embed: bool = False,
        preload: dict[str, Any] | None = None,
    ):
        if workers < 2:
            raise ValueError(f"FacePool needs workers >= 2 (got {workers}); 1 is the serial path")
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(analyzer_args, embed, preload or {}),
        )
        self.workers = workers

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (those started so far)."""
        return list(self._executor._processes)  # noqa: SLF001 - no public accessor

    def map(
        self, function: Callable[..., Any], arguments: Iterable[tuple[Any, ...]]
    ) -> Iterator[Any]:
        """``function(*args, analyzer, embedder)`` for each ``args``, results in input order."""
        tasks = list(arguments)
        size = max(1, len(tasks) // (4 * self.workers))
        futures = [
            self._executor.submit(_run_chunk, function, tasks[start : start + size])
            for start in range(0, len(tasks), size)
        ]
        return self._results(futures)

    @staticmethod
    def _results(futures: list[Future]) -> Iterator[Any]:
        done = 0
        try:
            for future in futures:
                yield from _unpack(*future.result())
                done += 1
        finally:
            for future in futures[done + 1 :]:
                if not future.cancel():  # running or finished: free its block when it ends
                    future.add_done_callback(_discard)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FacePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
