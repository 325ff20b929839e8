"""The face stage in a process pool: each worker holds its own detector, mesh and embedder.

Issue 19 §5. mediapipe's graphs run one image at a time and hold the GIL for much of it, so
threads do not help; processes do. Workers are started with ``spawn`` (never ``fork``: the
parent may hold torch's or mediapipe's threads, which a forked child would inherit locked).
Results come back in submission order, so the output is the serial path's, byte for byte
(``tests/core/faces/test_pool.py`` checks it on the demo photos and against a recorded digest).

Arrays of at least :data:`SHARED_MIN_BYTES` in a result (crops, masks, overlays: ~1.8 MB per
512 px photo) come back through POSIX shared memory, one block per chunk of tasks, and the
blocks are reused: the pool keeps up to ``2 x workers`` of them, hands a free one to each chunk
it submits, copies the arrays out when the chunk returns and frees the block for the next chunk.
A fresh block costs its page faults on every use (2.3-2.5 ms CPU per photo to copy a 512 px
photo's arrays into a new block, 0.2 ms into a reused one; measured 2026-12-06 at load ~24), so
reuse is the point. A chunk that does not fit its block gets a new one, which replaces it.
Where shared memory cannot be created (``OSError``, e.g. a small ``/dev/shm``), the chunk
travels pickled through the pipe. At most ``2 x workers`` chunks are in flight: chunks are
submitted as results are read. Inputs every task reads (the benchmark's photos) can be sent
once per worker with ``preload`` and read there with :func:`preloaded`.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import OrderedDict, deque
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


def _walk(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with ``leaf`` applied inside tuples, lists and dicts (other objects as they are:
    ``leaf`` decides)."""
    if type(value) is tuple:
        return tuple(_walk(item, leaf) for item in value)
    if type(value) is list:
        return [_walk(item, leaf) for item in value]
    if type(value) is dict:
        return {key: _walk(item, leaf) for key, item in value.items()}
    return leaf(value)


_WORKER_BLOCKS_KEPT = 8  # blocks a worker keeps mapped (the pool hands out 2 x workers)


def _worker_block(name: str) -> shared_memory.SharedMemory | None:
    """In a worker: the pool's block ``name``, mapped once and kept (its pages then cost no
    fault on reuse); the least recently used mapping beyond :data:`_WORKER_BLOCKS_KEPT` is
    closed. None when the block is gone."""
    blocks: OrderedDict[str, shared_memory.SharedMemory] = _STATE.setdefault(
        "blocks", OrderedDict()
    )
    if name in blocks:
        blocks.move_to_end(name)
        return blocks[name]
    try:
        block = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return None
    blocks[name] = block
    while len(blocks) > _WORKER_BLOCKS_KEPT:
        blocks.popitem(last=False)[1].close()
    return block


def _pack(results: list[Any], target: str | None = None) -> tuple[str | None, list[Any]]:
    """``results`` with every large array copied into shared memory: into the pool's block
    ``target`` when it is large enough, else into a new block (which the parent adopts or
    unlinks). Returns the block's name (None when nothing was moved or no block could be made:
    then the results travel pickled) and the results with :class:`_Slot` in the arrays' place.
    """
    placed: list[tuple[np.ndarray, int]] = []  # (array, offset in the block)
    size = 0

    def slot(value: Any) -> Any:
        nonlocal size
        if (type(value) is np.ndarray and value.nbytes >= SHARED_MIN_BYTES
                and not value.dtype.hasobject):  # fmt: skip
            placed.append((value, size))
            found = _Slot(size, value.shape, value.dtype.str)
            size += -(-value.nbytes // _ALIGN) * _ALIGN
            return found
        return value

    packed = _walk(results, slot)
    if not placed:
        return None, results
    block = _worker_block(target) if target else None
    fresh = block is None or block.size < size
    if fresh:
        try:
            block = shared_memory.SharedMemory(create=True, size=size)
        except OSError:  # no room in /dev/shm: the pipe, as before
            return None, results
    assert block is not None
    for array, offset in placed:
        into = np.ndarray(array.shape, array.dtype, buffer=block.buf, offset=offset)
        into[...] = array
        del into
    if fresh:
        block.close()  # the parent adopts it (or unlinks it) once it has copied the arrays
    return block.name, packed


def _copy_out(block: shared_memory.SharedMemory, packed: list[Any]) -> list[Any]:
    """The packed results with every :class:`_Slot` replaced by a copy of its array."""

    def array(value: Any) -> Any:
        if isinstance(value, _Slot):
            view = np.ndarray(value.shape, np.dtype(value.dtype), buffer=block.buf,
                              offset=value.offset)  # fmt: skip
            copied = view.copy()
            del view
            return copied
        return value

    return _walk(packed, array)


def _run_chunk(
    function: Callable[..., Any], chunk: list[tuple[Any, ...]], target: str | None = None
) -> tuple[str | None, list[Any]]:
    results = [function(*args, _STATE["analyzer"], _STATE.get("embedder")) for args in chunk]
    return _pack(results, target)


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
        self.in_flight = 2 * workers  # chunks submitted ahead, and blocks kept
        self._blocks: dict[str, shared_memory.SharedMemory] = {}
        self._free: list[str] = []
        self._lock = threading.Lock()

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (those started so far)."""
        return list(self._executor._processes)  # noqa: SLF001 - no public accessor

    def blocks(self) -> list[str]:
        """Names of the shared-memory blocks the pool keeps (for tests and cleanup checks)."""
        with self._lock:
            return list(self._blocks)

    def map(
        self, function: Callable[..., Any], arguments: Iterable[tuple[Any, ...]]
    ) -> Iterator[Any]:
        """``function(*args, analyzer, embedder)`` for each ``args``, results in input order
        (chunks are submitted as the results are read, at most ``in_flight`` ahead)."""
        tasks = list(arguments)
        size = max(1, len(tasks) // (4 * self.workers))
        chunks = [tasks[start : start + size] for start in range(0, len(tasks), size)]
        return self._results(function, chunks)

    def _results(self, function: Callable[..., Any], chunks: list[list]) -> Iterator[Any]:
        pending: deque[tuple[Future, str | None]] = deque()
        queued = iter(chunks)

        def submit() -> None:
            for chunk in queued:
                with self._lock:
                    target = self._free.pop() if self._free else None
                future = self._executor.submit(_run_chunk, function, chunk, target)
                pending.append((future, target))
                if len(pending) >= self.in_flight:
                    return

        submit()
        try:
            while pending:
                future, target = pending[0]
                try:
                    name, packed = future.result()
                except BaseException:
                    self._release(target, None)
                    pending.popleft()
                    raise
                pending.popleft()
                results = self._receive(target, name, packed)
                submit()
                yield from results
        finally:
            for future, target in pending:  # abandoned: free their blocks when they end
                future.add_done_callback(lambda done, t=target: self._discard(done, t))
                future.cancel()

    def _receive(self, target: str | None, name: str | None, packed: list[Any]) -> list[Any]:
        """A chunk's results copied out of its block; the block is free again afterwards."""
        if name is None:
            self._release(target, None)
            return packed
        with self._lock:
            block = self._blocks.get(name)
        if block is None:  # a new block the worker made
            block = shared_memory.SharedMemory(name=name)
        try:
            return _copy_out(block, packed)
        finally:
            self._release(target, None if name == target else block)

    def _release(self, target: str | None, new: shared_memory.SharedMemory | None) -> None:
        """Free the chunk's ``target`` block; adopt the ``new`` one its worker made (replacing
        ``target``, too small) while the pool keeps fewer than ``in_flight``, else unlink it."""
        with self._lock:
            if new is not None and target is not None:  # target was too small: replaced
                old = self._blocks.pop(target)
                old.close()
                old.unlink()  # workers that mapped it let it go as their caches turn over
                target = None
            if target is not None:
                self._free.append(target)
            if new is not None:
                if len(self._blocks) < self.in_flight:
                    self._blocks[new.name] = new
                    self._free.append(new.name)
                else:
                    new.close()
                    new.unlink()

    def _discard(self, future: Future, target: str | None) -> None:
        if future.cancelled() or future.exception() is not None:
            self._release(target, None)
            return
        self._receive(target, *future.result())

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            blocks, self._blocks, self._free = self._blocks, {}, []
        for block in blocks.values():
            block.close()
            block.unlink()

    def __enter__(self) -> FacePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

