"""A tracking-server outage never loses data silently (issue 21 §3): spool, deliver, sync later.

Measured before: with MLflow's default retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7``, backoff
factor 2, ``MLFLOW_HTTP_REQUEST_TIMEOUT=120`` s) every call to a dead server stalled about four
minutes; the calls then failed as warnings and, after a restart, the run ended ``FINISHED`` with 8
of its 17 metrics and no sign of the loss.

:class:`SpoolingClient` wraps the hook's ``MlflowClient``. A logging call (:data:`SPOOLED`) that
fails because the server cannot be reached (:func:`is_outage`: a connection error, a timeout, a
5xx) is appended as one JSON line to ``<project>/data/.mlflow_spool/<run_id>.jsonl``; from then
on, every call goes to the spool behind it (order kept) and the spool is offered to the server
again at most every :data:`RETRY_S` seconds: when the server is back, it is delivered in order
and the file removed. Training never waits for the server longer than one call's timeout.

Against a tracking server (``http(s)://``) the hook sets, unless the environment already does,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = :data:`HTTP_MAX_RETRIES` and ``MLFLOW_HTTP_REQUEST_TIMEOUT``
= :data:`HTTP_TIMEOUT_S`: a dead server costs at most about 12 s per attempt, not 4 minutes.

The bound: at most :data:`MAX_SPOOL_BYTES` of spool per run (the records name artifact files
by path; the files themselves stay where the run wrote them). A call past the bound is dropped
and counted; the run's closing calls (its end and the tags below) are always kept.

The end of the run (``set_terminated``) is spooled like any call, so a run whose data did not
all reach the server is never marked ``FINISHED`` on it: it stays ``RUNNING`` there until
``python -m magicapture_pipeline.tracking.spool sync`` delivers the spool and then ends it with
the status it had. Every run ends with the tag ``tracking.complete`` (``true``: every call
reached the server; ``false``: calls were dropped past the bound, and the status is then
``FAILED``, never ``FINISHED``) and ``tracking.spooled_calls`` (how many calls arrived late).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SPOOL_DIR = Path("data") / ".mlflow_spool"
SPOOLED = frozenset({
    "log_batch", "set_tag", "log_dict", "log_text", "log_artifact", "log_artifacts",
    "log_image", "set_terminated",
})
RETRY_S = 10.0  # how often a non-empty spool is offered to the server again
MAX_SPOOL_BYTES = 64 * 1024 * 1024  # per run
HTTP_MAX_RETRIES = 1  # MLflow's default: 7 (with backoff, ~4 minutes per call on a dead server)
HTTP_TIMEOUT_S = 5  # MLflow's default: 120
COMPLETE_TAG = "tracking.complete"
SPOOLED_TAG = "tracking.spooled_calls"
CLOSING_TAGS = (COMPLETE_TAG, SPOOLED_TAG, "error")


def set_http_timeouts() -> None:
    """Short retries and timeouts for calls to a tracking server (the environment wins)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_MAX_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))


def is_outage(error: BaseException) -> bool:
    """The server could not be reached (worth retrying later), not a refused call."""
    import requests

    if isinstance(error, (requests.ConnectionError, requests.Timeout, ConnectionError)):
        return True
    text = str(error)
    markers = ("Max retries exceeded", "Connection refused", "timed out", "Read timed out",
               "RemoteDisconnected", "Connection aborted", "503", "502", "504")
    return type(error).__name__ == "MlflowException" and any(m in text for m in markers)


def _encode(value: Any) -> Any:
    """A call's argument as JSON (MLflow's entities as their fields, images as PNG files)."""
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    if isinstance(value, Metric):
        return {"__metric__": [value.key, value.value, value.timestamp, value.step]}
    if isinstance(value, (Param, RunTag)):
        return {f"__{type(value).__name__.lower()}__": [value.key, value.value]}
    if isinstance(value, Path):
        return str(value)
    return value


def _decode(value: Any) -> Any:
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, dict) and len(value) == 1:
        (key, fields), = value.items()
        kinds = {"__metric__": Metric, "__param__": Param, "__runtag__": RunTag}
        if key in kinds:
            return kinds[key](*fields)
        if key == "__image__":  # a spooled log_image(key=, step=) picture
            from PIL import Image

            with Image.open(fields) as image:
                return image.copy()
    return value


class SpoolingClient:
    """An ``MlflowClient`` whose logging calls survive a server outage (module docstring)."""

    def __init__(self, client: Any, run_id: str, spool_dir: Path, tracking_uri: str) -> None:
        self._client = client
        self.run_id = run_id
        self.path = Path(spool_dir) / f"{run_id}.jsonl"
        self.tracking_uri = tracking_uri
        self.spooled = 0  # calls that went through the spool
        self.dropped = 0  # calls past the bound
        self._next_try = 0.0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in SPOOLED:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, args, kwargs)

        return call

    @property
    def pending(self) -> bool:
        """Calls wait in the spool."""
        return self.path.is_file()

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name == "log_image" and kwargs.get("key") is None:  # an artifact file: keep it as
            return self._log_image(args, kwargs)  # a file the spool can name
        # log_image(key=, step=) (validation images, issue 20): spooled as a PNG (_append)
        if self.pending and not self.flush():
            return self._append(name, args, kwargs)
        try:
            return getattr(self._client, name)(*args, **kwargs)
        except Exception as error:
            if not is_outage(error):
                raise
            logger.warning("MLflow server unreachable (%s): spooling to %s", error, self.path)
            self._append(name, args, kwargs)
            return None

    def _log_image(self, args: tuple, kwargs: dict) -> Any:
        run_id, image, artifact_file = (list(args) + [None, None, None])[:3]
        image = kwargs.get("image", image)
        artifact_file = kwargs.get("artifact_file", artifact_file)
        local = self.path.with_suffix("") / artifact_file
        local.parent.mkdir(parents=True, exist_ok=True)
        image.save(local)
        folder = str(Path(artifact_file).parent) if Path(artifact_file).parent.name else None
        return self._call("log_artifact", (run_id, str(local), folder), {})

    def _saved(self, value: Any) -> Any:
        """A PIL image as a PNG beside the spool (``{"__image__": path}``); else ``value``."""
        if not (hasattr(value, "save") and hasattr(value, "mode")):
            return value
        local = self.path.with_suffix("") / "images" / f"{time.time_ns()}.png"
        local.parent.mkdir(parents=True, exist_ok=True)
        value.save(local)
        return {"__image__": str(local)}

    def _append(self, name: str, args: tuple, kwargs: dict) -> None:
        args = tuple(self._saved(value) for value in args)
        kwargs = {key: self._saved(value) for key, value in kwargs.items()}
        record = json.dumps({"call": name, "args": _encode(list(args)),
                             "kwargs": {k: _encode(v) for k, v in kwargs.items()}}) + "\n"
        size = self.path.stat().st_size if self.path.is_file() else 0
        key = (list(args) + [None, None])[1]
        # the run's end is never dropped: it says what was
        closing = name == "set_terminated" or (name == "set_tag" and key in CLOSING_TAGS)
        if size + len(record) > MAX_SPOOL_BYTES and not closing:
            self.dropped += 1
            logger.error("MLflow spool %s is full (%d bytes): %s dropped", self.path, size, name)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not size:
            header = {"tracking_uri": self.tracking_uri, "run_id": self.run_id}
            self.path.write_text(json.dumps(header) + "\n")
        with open(self.path, "a") as handle:
            handle.write(record)
            handle.flush()
            os.fsync(handle.fileno())
        self.spooled += 1

    def flush(self, force: bool = False) -> bool:
        """Offer the spool to the server (at most every ``RETRY_S`` s unless ``force``).

        Returns True when nothing is left in it.
        """
        if not self.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        self._next_try = time.monotonic() + RETRY_S
        try:
            deliver(self._client, self.path)
        except Exception as error:
            if not is_outage(error):
                raise
            return False
        logger.info("MLflow server back: delivered the spool of run %s", self.run_id)
        return True


def deliver(client: Any, path: Path) -> int:
    """Replay a spool file's calls in order (each one once: a delivered prefix is cut off).

    Returns the number of calls delivered; the file is removed when all are.
    """
    lines = path.read_text().splitlines()
    header, records = lines[0], lines[1:]
    for done, line in enumerate(records):
        record = json.loads(line)
        try:
            getattr(client, record["call"])(
                *_decode(record["args"]), **{k: _decode(v) for k, v in record["kwargs"].items()}
            )
        except Exception:
            rest = [header, *records[done:]]
            path.write_text("\n".join(rest) + "\n")  # what was delivered is not sent again
            raise
    path.unlink()
    return len(records)


def sync(folder: Path) -> int:
    """Deliver every spooled run in ``folder``; returns how many are still pending."""
    from mlflow import MlflowClient

    pending = 0
    for path in sorted(Path(folder).glob("*.jsonl")):
        header = json.loads(path.read_text().splitlines()[0])
        try:
            count = deliver(MlflowClient(tracking_uri=header["tracking_uri"]), path)
            print(f"run {header['run_id']}: {count} call(s) delivered to {header['tracking_uri']}")  # noqa: T201
        except Exception as error:  # noqa: BLE001 - one line per run, then the next
            pending += 1
            print(f"run {header['run_id']}: still pending ({type(error).__name__}: {error})")  # noqa: T201
    return pending


def main(argv: list[str] | None = None) -> int:
    """``python -m magicapture_pipeline.tracking.spool sync [--dir data/.mlflow_spool]``."""
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.tracking.spool")
    parser.add_argument("action", choices=["sync"])
    parser.add_argument("--dir", type=Path, default=SPOOL_DIR, help="the spool folder")
    args = parser.parse_args(argv)
    set_http_timeouts()
    return 1 if sync(args.dir) else 0


if __name__ == "__main__":
    sys.exit(main())
