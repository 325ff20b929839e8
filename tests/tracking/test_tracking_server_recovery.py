"""``make tracking-server`` recovers by itself and refuses a mixed setting (issue 21 §3): a real
PostgreSQL cluster and a real ``mlflow server``, the latter SIGKILLed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from magicapture_pipeline.tracking import server as tracking_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.service,
    pytest.mark.xdist_group("postgres"),
    pytest.mark.skipif(tracking_server.pg_bin() is None, reason="PostgreSQL binaries not found"),
]


def psql(state, query: str) -> str:
    command = [str(tracking_server.pg_bin() / "psql"), "-h", "127.0.0.1", "-p",
               str(state.pg_port), "-U", "mlflow", "-d", "mlflow", "-tAc", query]
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def test_restart_after_mlflow_died_team_refused_private_and_ordinary_role():
    folder = Path(tempfile.mkdtemp(prefix="magicapture-recover-"))
    try:
        state = tracking_server.start(folder, timeout=600)  # a busy shared machine is slow
        expected = 0o710 if os.geteuid() == 0 else 0o700
        assert folder.stat().st_mode & 0o777 == expected
        assert psql(state, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == "f"
        assert psql(state, "SELECT pg_get_userbyid(datdba) FROM pg_database "
                           "WHERE datname = 'mlflow'") == "mlflow"
        os.killpg(state.mlflow_pid, signal.SIGKILL)  # PostgreSQL keeps running
        deadline = time.time() + 60
        while tracking_server._alive(state.mlflow_pid) and time.time() < deadline:
            tracking_server._reap(state.mlflow_pid)
            time.sleep(0.2)
        again = tracking_server.start(folder, port=state.port, timeout=600)
        assert again.mlflow_pid != state.mlflow_pid and again.pg_port == state.pg_port
        team = subprocess.run(
            [sys.executable, "-m", "magicapture_pipeline.tracking.server", "start", "--dir",
             str(folder), "--port", str(again.port), "--team"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert team.returncode == 1, team.stdout + team.stderr
        assert "WITHOUT authentication already runs" in team.stderr
        assert again.tracking_uri not in team.stdout  # no URL handed back
        stopped = tracking_server.stop(folder)
        assert stopped[0].startswith("mlflow server (unauthenticated) on ") and len(stopped) == 2
        # a postmaster.pid left by a dead PostgreSQL (killed, machine rebooted)
        dead = subprocess.Popen(["true"])
        dead.wait()
        pid_file = folder / "postgres" / "data" / "postmaster.pid"
        pid_file.write_text(f"{dead.pid}\n{folder}/postgres/data\n0\n{state.pg_port}\n")
        third = tracking_server.start(folder, timeout=600)
        assert tracking_server._alive(third.mlflow_pid)
    finally:
        tracking_server.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)
