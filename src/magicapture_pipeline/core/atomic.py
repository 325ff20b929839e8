"""Write new, then swap: files and folders that are either the old version or the new, never half.

A file is written to a hidden sibling (``.<name>.tmp-<pid>``), flushed and ``fsync``-ed, then
``os.replace``-d over the target (atomic on POSIX within one filesystem). A folder is built the
same way as a hidden sibling and swapped in with two renames: the old folder moves aside to
``.<name>.old-<pid>``, the new one takes its name, the old one is deleted. A kill between the two
renames leaves the previous version under that ``.old`` name, never a mix.

Any failure (a full disk, a read-only folder, a bug in the writer) removes the temporary copy; an
``OSError`` is raised again as :class:`WriteFailed`, which names the target path and says the
previous version is unchanged (other exceptions keep their type).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class WriteFailed(OSError):
    """Writing ``path`` failed; the previous version (if any) is unchanged."""

    def __init__(self, path: str | Path, cause: BaseException) -> None:
        code = cause.errno if isinstance(cause, OSError) and cause.errno else errno.EIO
        reason = os.strerror(code) if isinstance(cause, OSError) else repr(cause)
        if isinstance(cause, OSError) and code == errno.ENOSPC:
            reason = "no space left on the device"
        super().__init__(
            code, f"could not write {path}: {reason}; the previous version there is unchanged"
        )
        self.path = str(path)
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def as_os_error(error: BaseException) -> OSError | None:
    """``error`` as an ``OSError``: itself, or one rebuilt from a Rust I/O error's text.

    safetensors (Rust) reports a full disk as ``SafetensorError("... (os error 28)")``, not as an
    ``OSError``; the errno in that text is kept.
    """
    if isinstance(error, OSError):
        return error
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make renames and new entries in a folder durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write the file to; it replaces ``target`` on success."""
    target = Path(target)
    temp = _sibling(target, "tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield temp
        fsync_file(temp)
        os.replace(temp, target)
        fsync_dir(target.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        io_error = as_os_error(error)
        if io_error is not None and not isinstance(error, WriteFailed):
            raise WriteFailed(target, io_error) from error
        raise


def write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as temp:
        temp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON to ``target`` atomically (objects JSON cannot hold as ``str``).

    The one JSON writer of the project's own state files (a batch's ``attempts``, ``result.json``,
    ``progress.json``); the catalog's JSON reports go through ``datasets/atomic.py``, which uses
    :func:`atomic_path` too.
    """
    write_text(target, json.dumps(data, indent=indent, default=str))


def fsync_tree(folder: str | Path) -> None:
    """``fsync`` every file under ``folder`` and the folders themselves."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


def swap_in_dir(built: Path, target: Path) -> None:
    """Put the finished folder ``built`` at ``target`` (replacing an older one)."""
    old = _sibling(target, "old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(built, target)
    fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it replaces ``target`` whole."""
    target = Path(target)
    temp = _sibling(target, "tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if temp.exists():
            shutil.rmtree(temp)
        temp.mkdir()
        yield temp
        fsync_tree(temp)
        swap_in_dir(temp, target)
    except BaseException as error:
        shutil.rmtree(temp, ignore_errors=True)
        io_error = as_os_error(error)
        if io_error is not None and not isinstance(error, WriteFailed):
            raise WriteFailed(target, io_error) from error
        raise
