"""Where the concepts of a batch run: a local pool of worker processes, or Ray tasks.

Both engines run each concept with :func:`magicapture_pipeline.batch.worker.execute_job` in a
process of its own, at most ``workers`` at a time, and retry a concept whose worker died (killed,
out of memory, node lost) up to ``retries`` times; the retry resumes from the concept's newest
checkpoints. A concept that *fails* (bad photos, an exception in a node) is not retried: its
failure is deterministic and its reason is in the result.

``poll`` is called about twice a second while the batch runs (the live table).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from magicapture_pipeline.batch.worker import describe_failure
from magicapture_pipeline.core.atomic import write_json

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": local Ray keeps every port on 127.0.0.1
POLL_S = 0.5
# After SIGTERM to its workers, a stopping driver waits this long for each to close (the stop hook
# marks the MLflow run KILLED and releases the lock: a few seconds, longer against a slow tracking
# server), then SIGKILLs whatever still runs. Ours: a hung close must not keep the driver (and the
# scheduler that stopped it) waiting forever; 30 s is well above the closes measured here.
STOP_GRACE_S = 30.0


def _attempts(state_dir: Path) -> int:
    counter = state_dir / "attempts"
    return int(counter.read_text()) if counter.is_file() else 0


def died_result(job: dict[str, Any], reason: str) -> dict[str, Any]:
    """The result of a concept whose every attempt died before it could report."""
    state_dir = Path(job["state_dir"])
    result = {
        "name": job["name"], "status": "failed", "reason": reason,
        "attempts": _attempts(state_dir), "mlflow_run_id": None, "registered_version": None,
        "concept_dir": None, "wall_s": None, "peak_rss_mb": None,
    }
    write_json(state_dir / "result.json", result)
    return result


def stopped_result(job: dict[str, Any], reason: str) -> dict[str, Any]:
    """The result of a concept the batch stopped (SIGTERM/Ctrl-C to the driver) before it ended.

    Its worker got SIGTERM: its MLflow run is KILLED, its lock released, its checkpoints resumable
    (``hooks/stop.py``); running the manifest again with the same concept resumes nothing by
    itself (attempt 1 starts fresh), a retry of the same batch id does.
    """
    result = {**died_result(job, reason), "status": "stopped"}
    write_json(Path(job["state_dir"]) / "result.json", result)
    return result


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class BatchStopped(BaseException):  # noqa: N818 - a stop, like KeyboardInterrupt
    """SIGTERM to the batch driver (``batch/cli.py`` raises it from its signal handler)."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")


class LocalEngine:
    """A pool of ``workers`` worker processes on this machine (one fresh process per attempt)."""

    name = "local"

    def __init__(
        self, workers: int = 1, retries: int = 2, threads: int | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.workers = max(1, int(workers))
        self.retries = max(0, int(retries))
        self.stop_grace_s = float(stop_grace_s)
        self.startup_s = 0.0
        self.threads = max(1, threads or (os.cpu_count() or 1) // self.workers)
        self._live: set[subprocess.Popen] = set()
        self._stopping = False
        self.stopped_by: str | None = None  # "SIGTERM", "SIGINT": the batch was stopped

    def describe(self) -> dict[str, Any]:
        return {"threads_per_worker": self.threads}

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def _run_one(self, job: dict[str, Any]) -> dict[str, Any]:
        state_dir = Path(job["state_dir"])
        job_file = state_dir / "job.json"
        write_json(job_file, {**job, "threads": self.threads})
        last = ""
        for _ in range(self.retries + 1):
            if self._stopping:
                break
            (state_dir / "result.json").unlink(missing_ok=True)
            with open(state_dir / "worker.log", "a") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "magicapture_pipeline.batch.worker", str(job_file)],
                    cwd=job["project"], env=self._environment(), stdout=log, stderr=log,
                    start_new_session=True,
                )
                self._live.add(process)
                if self._stopping:  # the stop came while this worker was being started
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGTERM)
                write_json(state_dir / "worker.json", {"pid": process.pid})
                code = process.wait()
                self._live.discard(process)
            result_file = state_dir / "result.json"
            if code == 0 and result_file.is_file():
                return json.loads(result_file.read_text())
            last = _exit_text(code)
        if self._stopping:
            return stopped_result(job, f"stopped by {self.stopped_by} ({last or 'not started'})")
        return died_result(
            job, f"worker died ({last}) on each of {self.retries + 1} attempts; see worker.log"
        )

    def run(self, jobs: list[dict[str, Any]], poll: Callable[[], None]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="concept") as pool:
            futures = [pool.submit(self._run_one, job) for job in jobs]
            try:
                while not all(f.done() for f in futures):
                    poll()
                    time.sleep(POLL_S)
            except BaseException as error:  # SIGTERM/Ctrl-C: the workers run in their own
                # sessions (a dying worker must not take others with it): stop them here
                self.stopped_by = getattr(error, "signal_name", None) or "SIGINT"
                self._stopping = True
                for future in futures:
                    future.cancel()
                self._stop_live()
                if not isinstance(error, (KeyboardInterrupt, BatchStopped)):
                    raise
        poll()  # the pool has waited for every started worker to end
        return [
            stopped_result(job, f"stopped by {self.stopped_by} before it started")
            if future.cancelled() else future.result()
            for job, future in zip(jobs, futures, strict=True)
        ]

    def _stop_live(self) -> None:
        """SIGTERM to every live worker's group; SIGKILL to those still there after the grace."""
        for process in list(self._live):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in list(self._live)):
            time.sleep(0.1)
        for process in list(self._live):
            if process.poll() is None:  # hung while closing: the grace is over
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def close(self) -> None:
        """Nothing to stop."""


def _ray_task(job: dict[str, Any]) -> dict[str, Any]:
    """Inside a Ray worker: send this process's output to the concept's log, run the job."""
    state_dir = Path(job["state_dir"])
    state_dir.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / "worker.log", "a")  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    from magicapture_pipeline.batch.worker import execute_job

    return execute_job(job)


class RayEngine:
    """Each concept is a Ray task: a local Ray on loopback, or a cluster at ``address``.

    A task asks for one GPU when the cluster has GPUs, otherwise ``CPUs // workers`` CPUs. Ray
    retries a task whose worker process died (``max_retries``); ``max_calls=1`` gives every task a
    fresh process (Kedro, torch and the run's globals never leak from one concept to the next).
    """

    name = "ray"

    def __init__(
        self, workers: int = 1, retries: int = 2, address: str | None = None,
        threads: int | None = None, stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.threads = threads
        self.stop_grace_s = float(stop_grace_s)
        self.stopped_by: str | None = None  # "SIGTERM", "SIGINT": the batch was stopped
        self.workers = max(1, int(workers))
        self.retries = max(0, int(retries))
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.startup_s: float | None = None
        self.resources: dict[str, float] = {}
        self.task_options: dict[str, Any] = {}
        self._ray: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address or "local (embedded, 127.0.0.1)",
            "ray_startup_s": self.startup_s,
            "cluster_resources": {k: v for k, v in self.resources.items() if "node:" not in k},
            "task_options": self.task_options,
            "threads_per_worker": self.threads or int(self.task_options.get("num_cpus", 1)),
        }

    def start(self) -> None:
        """Start (or join) Ray; the seconds it took are ``startup_s``."""
        began = time.time()
        if self.address is None:
            os.environ.setdefault(LOOPBACK_ENV, "0")  # must precede `import ray`
        import ray

        previous = signal.getsignal(signal.SIGTERM)
        if self.address is None:
            # address="local": a new instance, never the latest cluster `ray start` or
            # ray.cluster_utils recorded in /tmp/ray/ray_current_cluster (ray.init's None joins it)
            ray.init(
                address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        if previous is not None and threading.current_thread() is threading.main_thread():
            # ray.init installs its own SIGTERM handlers (the C++ one aborts the driver): the
            # batch's handler stays in charge, so SIGTERM cancels the tasks (``run``)
            signal.signal(signal.SIGTERM, previous)
        self._ray = ray
        self.startup_s = round(time.time() - began, 3)
        self.resources = dict(ray.cluster_resources())
        gpus = self.resources.get("GPU", 0.0)
        cpus = self.resources.get("CPU", 1.0)
        if gpus >= 1:
            self.task_options = {"num_gpus": 1, "num_cpus": 1}
        else:
            self.task_options = {"num_cpus": max(1, int(cpus // self.workers))}

    def run(self, jobs: list[dict[str, Any]], poll: Callable[[], None]) -> list[dict[str, Any]]:
        if self._ray is None:
            self.start()
        ray = self._ray
        task = ray.remote(
            max_calls=1, max_retries=self.retries, retry_exceptions=False, **self.task_options
        )(_ray_task)
        threads = self.threads or int(self.task_options.get("num_cpus", 1))
        queue = [{**job, "threads": threads} for job in jobs]
        pending: dict[Any, dict[str, Any]] = {}
        results: dict[str, dict[str, Any]] = {}
        with self._signals_as_flags():  # raised inside Ray's C++ wait they become SystemError
            while (queue or pending) and self.stopped_by is None:
                while queue and len(pending) < self.workers:
                    job = queue.pop(0)
                    pending[task.remote(job)] = job
                done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                poll()
                for ref in done:
                    self._collect(ref, pending.pop(ref), results)
            if self.stopped_by is not None:  # SIGTERM/Ctrl-C to the driver: cancel every task
                self._cancel(pending, results)
                for job in queue:
                    results[job["name"]] = stopped_result(
                        job, f"stopped by {self.stopped_by} before it started"
                    )
        poll()
        return [results[job["name"]] for job in jobs]

    @contextlib.contextmanager
    def _signals_as_flags(self) -> Any:
        """While tasks run, SIGTERM/SIGINT set ``stopped_by`` (checked twice a second)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def flag(signum: int, frame: Any) -> None:
            self.stopped_by = self.stopped_by or signal.Signals(signum).name

        previous = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _collect(self, ref: Any, job: dict[str, Any], results: dict[str, Any]) -> None:
        try:
            results[job["name"]] = self._ray.get(ref)
        except Exception as error:  # noqa: BLE001 - retries exhausted: report it
            results[job["name"]] = died_result(
                job, f"Ray task failed after {self.retries} retries: "
                + describe_failure(error).splitlines()[0]
            )

    def _cancel(self, pending: dict[Any, dict[str, Any]], results: dict[str, Any]) -> None:
        """Interrupt every running task (its stop hook closes the run: SIGINT in the task), wait
        ``stop_grace_s``, then ``ray.cancel(force=True)`` (the worker process is killed) whatever
        still runs; a cancelled task is not retried. Each concept is marked ``stopped``."""
        ray = self._ray
        if not pending:
            return
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False)
        ready, rest = ray.wait(list(pending), num_returns=len(pending), timeout=self.stop_grace_s)
        for ref in rest:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        for ref, job in pending.items():
            how = "task interrupted" if ref in ready else (
                f"task force-cancelled after {self.stop_grace_s:g} s of grace"
            )
            results[job["name"]] = stopped_result(job, f"stopped by {self.stopped_by} ({how})")

    def close(self) -> None:
        """Stop the embedded Ray (a cluster we joined keeps running)."""
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None
