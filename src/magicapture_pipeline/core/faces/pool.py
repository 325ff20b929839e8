"""The face stage in a process pool: each worker holds its own detector, mesh and embedder.

Issue 19 §5. mediapipe's graphs run one image at a time and hold the GIL for much of it, so
threads do not help; processes do. Workers are started with ``spawn`` (never ``fork``: the
parent may hold torch's or mediapipe's threads, which a forked child would inherit locked).
Results come back in submission order, so the output is the serial path's, byte for byte
(``tests/core/faces/test_pool.py`` checks it on the demo photos).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

# One worker's state: built once by the initializer, used by every task the worker runs.
_STATE: dict[str, Any] = {}


def _init_worker(analyzer_args: tuple[Any, ...], embed: bool) -> None:
    import os

    from magicapture_pipeline.core.faces.detection import FaceAnalyzer

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    analyzer = FaceAnalyzer(*analyzer_args)
    analyzer.__enter__()
    _STATE["analyzer"] = analyzer
    if embed:
        from magicapture_pipeline.core.identity.embedders import DlibFaceEmbedder

        _STATE["embedder"] = DlibFaceEmbedder()


def _run(task: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    function, args = task
    return function(*args, _STATE["analyzer"], _STATE.get("embedder"))


class FacePool:
    """``workers`` processes, each with a :class:`FaceAnalyzer` built from ``analyzer_args``
    (and a dlib embedder when ``embed``), mapping module-level functions over inputs in order.

    Each function is called as ``function(*args, analyzer, embedder)`` in a worker.
    """

    def __init__(self, workers: int, analyzer_args: tuple[Any, ...] = (), embed: bool = False):
        if workers < 2:
            raise ValueError(f"FacePool needs workers >= 2 (got {workers}); 1 is the serial path")
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(analyzer_args, embed),
        )
        self.workers = workers

    def map(
        self, function: Callable[..., Any], arguments: Iterable[tuple[Any, ...]]
    ) -> Iterator[Any]:
        """``function(*args, analyzer, embedder)`` for each ``args``, results in input order."""
        tasks = [(function, args) for args in arguments]
        chunk = max(1, len(tasks) // (4 * self.workers))
        return self._executor.map(_run, tasks, chunksize=chunk)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FacePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
