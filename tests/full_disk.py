"""Real full and read-only disks for the tests that need them (a tiny tmpfs), and a report of
those that could not run.

Mounting a tmpfs needs root. Where it cannot be done, the test is skipped with a reason that starts
``full-disk test NOT RUN`` and the session ends with a section listing every such test, so a run
never looks as if ENOSPC/EROFS handling had been checked when it was not. With
``MAGICAPTURE_REQUIRE_FULL_DISK=1`` (CI, which runs as root) such a test fails instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_ENV = "MAGICAPTURE_REQUIRE_FULL_DISK"
NOT_RUN = "full-disk test NOT RUN"


def cannot_run(reason: str) -> None:
    """Fail (``$MAGICAPTURE_REQUIRE_FULL_DISK`` set) or skip with a reason the summary reports."""
    message = f"{NOT_RUN}: {reason}"
    if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE_ENV} is set)")
    pytest.skip(message)


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """A ``size`` tmpfs mounted at ``where`` (created), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        cannot_run(f"mounting a tmpfs needs root (running as uid {os.geteuid()})")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        cannot_run(f"mount -t tmpfs failed ({done.stderr.decode().strip() or done.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    """List the full-disk tests that could not run (works under xdist: it reads the reports)."""
    lines = []
    for report in terminalreporter.stats.get("skipped", []):
        text = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if NOT_RUN in text:
            lines.append(f"{report.nodeid}: {text.split(NOT_RUN + ': ', 1)[-1]}")
    if lines:
        terminalreporter.section(f"{len(lines)} full-disk test(s) could not run", yellow=True)
        for line in lines:
            terminalreporter.write_line(line)
        terminalreporter.write_line(
            f"ENOSPC/EROFS handling on a real filesystem was NOT checked in this run; run as root "
            f"(CI does) or set {REQUIRE_ENV}=1 to make this a failure."
        )
