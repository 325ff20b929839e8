"""Every stop closes its run: SIGTERM and SIGINT during ``kedro run`` (issue 21 §2).

Without this hook, SIGTERM (what ``timeout``, Slurm and Kubernetes send) kills the process at once
and SIGINT raises ``KeyboardInterrupt``, which Kedro does not pass to ``on_pipeline_error``: the
MLflow run stayed ``RUNNING`` forever and the concept's lock file stayed behind.

:class:`StopSignalHook` installs handlers for both signals once the run has started (``trylast``
in ``before_pipeline_run``: the lock is held and the MLflow run exists). A signal raises
:class:`magicapture_pipeline.concepts.RunStopped` (an ``Exception``) in the main thread, so Kedro
calls ``on_pipeline_error``: the tracking hook marks the run ``KILLED`` with the signal in the tag
``stopped_by_signal``, the lock hook releases the lock, the progress file says ``failed``.
Checkpoints are written atomically (``core/atomic.py``), so the newest complete one is resumable.
Last (``trylast`` in ``on_pipeline_error``) the hook restores the default handler and sends the
signal to its own process again, so the process still dies BY the signal (exit status -15 / -2,
shell 143 / 130): schedulers and the batch engines see a death and may retry.

Code that swallows the exception (a broad ``except Exception``) cannot hide the stop: the next
node or saved dataset raises it again. A second signal of the same kind while the run is being
closed kills the process at once (an operator who insists).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from kedro.framework.hooks import hook_impl

from magicapture_pipeline.concepts import RunStopped

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignalHook:
    """Turns SIGTERM/SIGINT into a closed run, then dies by the signal (module docstring)."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self.received: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second signal while closing: die now
            self._die(signum)
        self.received = signum
        name = signal.Signals(signum).name
        logger.warning("%s received: closing the run (MLflow run KILLED, lock released)", name)
        raise RunStopped(signum)

    @hook_impl(trylast=True)
    def before_pipeline_run(self) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _check(self) -> None:
        if self.received is not None:  # raised once and swallowed somewhere: raise it again
            raise RunStopped(self.received)

    @hook_impl
    def before_node_run(self) -> None:
        self._check()

    @hook_impl
    def after_dataset_saved(self) -> None:
        self._check()

    def _restore(self) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._restore()

    @hook_impl(trylast=True)
    def on_pipeline_error(self, error: Exception) -> None:
        self._restore()
        signum = error.signum if isinstance(error, RunStopped) else self.received
        if signum is not None:
            self._die(signum)

    @staticmethod
    def _die(signum: int) -> None:
        """Die by ``signum`` with its default action (so the parent sees the signal)."""
        logging.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        raise SystemExit(128 + signum)  # only if the default action did not end the process
