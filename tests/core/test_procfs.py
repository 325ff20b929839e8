"""``core.procfs``: one reader of ``/proc/<pid>/stat`` for the concept lock, the tracking server's
stop and the preprocessing throughput figure."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from magicapture_pipeline.core import procfs

# A child that names itself like a hostile command (``/proc/<pid>/comm``, 15 bytes at most) so
# that a parser splitting at the first ')' or at spaces reads the wrong fields, then waits.
ODD_NAME = "a) b (c) d"
NAMED_SLEEPER = (
    "import sys, time\n"
    f"open('/proc/self/comm', 'w').write({ODD_NAME!r})\n"
    "print('named', flush=True)\n"
    "time.sleep(60)\n"
)


def test_own_process_fields():
    fields = procfs.stat_fields(os.getpid())
    assert fields is not None and not procfs.is_zombie(fields)
    assert fields[procfs.STATE] in "RS"
    assert int(fields[procfs.PGRP]) == os.getpgrp()
    assert procfs.start_time(os.getpid()) == procfs.start_time(os.getpid()) is not None


def test_cpu_seconds_grow_with_work():
    before = procfs.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    after = procfs.cpu_seconds(os.getpid())
    assert before is not None and after is not None
    assert after - before >= 0.1  # 10 ms ticks; 0.2 s of work


def test_a_command_name_with_parentheses_and_spaces_is_skipped_whole():
    child = subprocess.Popen([sys.executable, "-c", NAMED_SLEEPER], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "named"
        fields = procfs.stat_fields(child.pid)
        assert fields is not None and fields[procfs.STATE] in "RS"
        assert int(fields[procfs.PGRP]) == child.pid  # its own session and group
        assert list(procfs.group_members(child.pid)) == [child.pid]
        assert procfs.cpu_seconds(child.pid) is not None
    finally:
        child.kill()
        child.wait()


def test_a_zombie_is_no_group_member_and_a_gone_pid_reads_none():
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # exited, not yet collected: a zombie
        fields = procfs.stat_fields(child.pid)
        if fields and procfs.is_zombie(fields):
            break
        time.sleep(0.02)
    assert fields and procfs.is_zombie(fields)
    assert list(procfs.group_members(child.pid)) == []
    child.wait()
    assert procfs.stat_fields(child.pid) is None
    assert procfs.start_time(child.pid) is None and procfs.cpu_seconds(child.pid) is None
