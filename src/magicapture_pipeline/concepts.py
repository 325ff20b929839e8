"""A concept (one person x style customisation) is the unit of work: its name and its run lock.

Kedro-free. The name is a runtime parameter (``kedro run --params=concept=alice``); the config
loader checks it with :func:`validate_concept_name` while it resolves the catalog and parameters
(``${concept:...}`` in ``conf/``, registered in ``settings.py``), so a bad name stops the run
before any dataset is read or written.

:class:`ConceptLock` is the per-concept run lock (``data/.locks/<concept>.lock``): a second run on
a concept that is already running refuses at start; a lock left by a crashed run is recovered.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicapture_pipeline.core import procfs

logger = logging.getLogger(__name__)

CONCEPT_NAME_RULE = "lower-case letters, digits and '-', 1 to 64 characters"
_NAME = re.compile(r"[a-z0-9-]{1,64}")
LOCK_DIR = Path("data") / ".locks"
LOCK_TTL_ENV = "MAGICAPTURE_LOCK_TTL_S"
DEFAULT_LOCK_TTL_S = 600.0  # a lock not refreshed for this long is stale (holder on another host)
HEARTBEAT_S = 30.0


class ConceptNameError(ValueError):
    """A concept name that breaks :data:`CONCEPT_NAME_RULE`."""


class ConceptLockedError(RuntimeError):
    """Another live run holds the concept's lock."""


class RunStopped(Exception):  # noqa: N818 - a stop, not an error in the run
    """The run was stopped by a signal (SIGTERM, SIGINT): see ``hooks/stop.py``.

    An ``Exception`` (not a ``BaseException`` like ``KeyboardInterrupt``) so that Kedro passes it to
    ``on_pipeline_error`` and every hook closes what it opened.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {self.signal_name}")


def validate_concept_name(name: Any) -> str:
    """``name`` if it follows :data:`CONCEPT_NAME_RULE`, else :class:`ConceptNameError`.

    The rule keeps a name safe as a path segment (``data/<layer>/<concept>/``) and as an MLflow
    experiment and registered-model suffix (``magicapture-<concept>``).
    """
    text = "" if name is None else str(name)
    if not _NAME.fullmatch(text):
        raise ConceptNameError(f"concept name {text!r} is invalid: use {CONCEPT_NAME_RULE}")
    return text


def _process_alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (dead, not yet reaped: a SIGKILLed Ray worker whose
    node was lost, under a parent or container PID 1 that has not waited for it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    fields = procfs.stat_fields(pid)
    return fields is None or not procfs.is_zombie(fields)  # no /proc or gone: kill() decided


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock (the lock file's JSON)."""

    concept: str
    pid: int
    host: str
    started: float
    process_start: str | None = None
    note: str = ""

    def describe(self) -> str:
        age = time.time() - self.started
        note = f", {self.note}" if self.note else ""
        return f"pid {self.pid} on {self.host}, started {age:.0f} s ago{note}"


class ConceptLock:
    """An exclusive, crash-safe run lock for one concept (a JSON file created with O_EXCL).

    A lock is stale, and is taken over, when its holder ran on this host and that process is gone
    (or its pid now belongs to another process), or when the file has not been refreshed for
    ``ttl_s`` seconds (a holder on another host sharing ``data/``): while held, a daemon thread
    touches the file every ``heartbeat_s`` seconds.
    """

    def __init__(
        self,
        root: str | Path,
        concept: str,
        *,
        ttl_s: float | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        note: str = "",
    ) -> None:
        self.concept = validate_concept_name(concept)
        self.path = Path(root) / LOCK_DIR / f"{self.concept}.lock"
        env_ttl = os.environ.get(LOCK_TTL_ENV)
        self.ttl_s = float(ttl_s if ttl_s is not None else env_ttl or DEFAULT_LOCK_TTL_S)
        self.heartbeat_s = min(heartbeat_s, self.ttl_s / 3)
        self.note = note
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    # -- reading -------------------------------------------------------------------------
    def owner(self) -> LockOwner | None:
        """The current holder as written in the lock file (None: no lock or unreadable)."""
        try:
            data = json.loads(self.path.read_text())
            return LockOwner(**data)
        except (OSError, ValueError, TypeError):
            return None

    def stale_reason(self) -> str | None:  # noqa: PLR0911 - one return per case, in order
        """Why the existing lock is stale, or None while its holder looks alive."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "gone"
        owner = self.owner()
        if owner is None:
            # Being written right now, or garbage: only the age decides.
            return f"unreadable and not refreshed for {age:.0f} s" if age > self.ttl_s else None
        if owner.host == socket.gethostname():
            if not _process_alive(owner.pid):
                return f"holder pid {owner.pid} on {owner.host} is gone"
            start = procfs.start_time(owner.pid)
            if owner.process_start and start and start != owner.process_start:
                return f"pid {owner.pid} on {owner.host} now belongs to another process"
            return None
        if age > self.ttl_s:
            return f"not refreshed for {age:.0f} s (> {self.ttl_s:.0f} s) by {owner.host}"
        return None

    # -- taking and giving back ----------------------------------------------------------
    def acquire(self) -> ConceptLock:
        """Take the lock or raise :class:`ConceptLockedError` naming the holder.

        Checking and taking over a stale lock happen under an ``flock`` on ``<name>.guard``, so
        two runs that both find the same stale lock cannot both take it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        guard = self.path.with_suffix(".guard")
        with open(guard, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._acquire_locked()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        self.held = True
        self._start_heartbeat()
        return self

    def _acquire_locked(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                reason = self.stale_reason()
                if reason is None:
                    owner = self.owner()
                    raise ConceptLockedError(
                        f"concept {self.concept!r} is already running "
                        f"({owner.describe() if owner else 'holder unknown'}); lock file "
                        f"{self.path}. Wait for it to finish, or delete the file if you are sure "
                        "no run is alive."
                    ) from None
                logger.warning("Recovering the stale lock %s: %s", self.path, reason)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self._owner_record(), handle)
            return
        raise ConceptLockedError(f"could not take the lock {self.path}")

    def _owner_record(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "process_start": procfs.start_time(os.getpid()),
            "note": self.note,
        }

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name=f"lock-{self.concept}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lock back (only if this process holds it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self.held:
            return
        self.held = False
        owner = self.owner()
        if owner is not None and owner.pid == os.getpid() and owner.host == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> ConceptLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
