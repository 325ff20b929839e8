"""What Linux's ``/proc/<pid>/stat`` says of a process: its state, group, start time and CPU.

One reader for the project's four uses: the concept lock (is the holder alive, is it the same
process as the one that took the lock: ``concepts.py``), the tracking server's stop (does any
process of the server's group still run: ``tracking/server.py``) and the preprocessing
throughput figure (the pool workers' CPU: ``core/faces/throughput.py``).

The command name (field 2) is in parentheses and may itself hold spaces and parentheses, so the
fields are read after the *last* ``)``; :func:`stat_fields` returns them from the state on
(``man 5 proc``: field 3 is index 0 here). Every function returns None where ``/proc`` cannot be
read (another OS, a process that is gone), never raises.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Indices into stat_fields(): `man 5 proc` field numbers minus 3.
STATE, PPID, PGRP, SESSION, UTIME, STIME, START_TIME = 0, 1, 2, 3, 11, 12, 19


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (the state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        fields = text.rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields or None


def is_zombie(fields: list[str]) -> bool:
    """A process that has exited and waits for its parent to collect its status."""
    return fields[STATE] == "Z"


def start_time(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (tells a reused pid from the original)."""
    fields = stat_fields(pid)
    return fields[START_TIME] if fields and len(fields) > START_TIME else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far, all its threads (10 ms ticks)."""
    fields = stat_fields(pid)
    if not fields or len(fields) <= STIME:
        return None
    return (int(fields[UTIME]) + int(fields[STIME])) / os.sysconf("SC_CLK_TCK")


def group_members(pgid: int) -> Iterator[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    for entry in Path("/proc").glob("[0-9]*"):
        fields = stat_fields(entry.name)
        if fields and len(fields) > PGRP and int(fields[PGRP]) == pgid and not is_zombie(fields):
            yield int(entry.name)
