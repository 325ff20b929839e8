"""MLflow clients that are safe when several concept runs share one local sqlite store.

Measured here (MLflow 3.17, four processes on a fresh ``sqlite:///mlflow.db``): three of four
died with ``sqlite3.OperationalError: table datasets already exists`` (each process runs the schema
migrations on first use), and sqlite allows one writer at a time (others wait ``timeout`` seconds
and then fail with "database is locked"). A tracking failure is only a warning in the hook, so
runs, parameters and metrics would be lost without a word.

:func:`tracking_client` therefore serialises every call to a local sqlite store with an ``flock``
on ``<database>.lock`` (across processes on one machine; the lock file sits beside the database).
Calls are short (a ``log_batch``, a ``create_run``), so concept runs wait milliseconds for each
other. A remote tracking server (``http://...``, e.g. ``make tracking-server`` with PostgreSQL)
handles concurrency itself and gets a plain client. Use the server for a cluster: ``flock`` does
not reach other machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SQLITE_PREFIX = "sqlite:///"


def sqlite_lock_path(tracking_uri: str | None) -> Path | None:
    """``<database>.lock`` for a local sqlite URI, else None."""
    if not tracking_uri or not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    database = Path(tracking_uri.removeprefix(SQLITE_PREFIX)).resolve()
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def store_lock(lock_path: Path | None) -> Iterator[None]:
    """Hold the store's lock (nothing to hold for None)."""
    if lock_path is None:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SerialisedClient:
    """An ``MlflowClient`` whose every method call holds the store's lock."""

    def __init__(self, client: Any, lock_path: Path) -> None:
        self._client = client
        self._lock_path = lock_path

    @property
    def wrapped(self) -> Any:
        """The plain client (for code that needs its type)."""
        return self._client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            with store_lock(self._lock_path):
                return attribute(*args, **kwargs)

        return call


def tracking_client(tracking_uri: str | None, registry_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri``; serialised when the store is local sqlite."""
    from mlflow import MlflowClient

    lock_path = sqlite_lock_path(tracking_uri)
    with store_lock(lock_path):  # the first use of a fresh database creates its schema
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        if lock_path is not None:
            client.search_experiments(max_results=1)  # migrations happen here, under the lock
    return client if lock_path is None else SerialisedClient(client, lock_path)
