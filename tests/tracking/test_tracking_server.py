"""The shared tracking server: PostgreSQL + ``mlflow server`` started by the test; on the same
cluster, ``make tracking-server`` recovers by itself and refuses a mixed setting (issue 21 §3).
The server and the cluster are stopped by the fixture (``.ci/run`` leaves nothing running).

Two concepts at once on a fresh tracking server (nothing lost, every step and metric, no MLflow
job runner, the registered concept served through the server) are checked by the Ray cluster test
(``tests/batch/test_ray_cluster_real.py``), whose two concepts run against its own fresh server:
this module's two concurrent ``kedro run``s repeated them (session 9).

One cluster for the module: starting PostgreSQL (initdb, MLflow's schema migrations) and an
``mlflow server`` costs about 30 CPU s here, so the recovery test, which used to start its own,
kills and restarts the module's server, and is the module's last test that uses it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import RestException

from magicapture_pipeline.tracking import server as tracking_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.service,
    pytest.mark.xdist_group("postgres"),  # one PostgreSQL cluster per module
    pytest.mark.skipif(
        tracking_server.pg_bin() is None,
        reason="PostgreSQL binaries not found ($MAGICAPTURE_PG_BIN, "
        f"{tracking_server.DEFAULT_PG_BIN}, PATH): install Debian's `postgresql` to run the "
        "tracking-server tests",
    ),
]


@pytest.fixture(scope="module")
def server():
    # Not under pytest's tmp folder: it is private to root (0700) and, run as root, the
    # cluster belongs to the postgres user, who must reach it.
    folder = Path(tempfile.mkdtemp(prefix="magicapture-tracking-"))
    folder.chmod(0o755)
    # the default two workers: with one, a run's artifact listing timed out (the hook's 5 s
    # client timeout) at load 70 while the other run uploaded
    state = tracking_server.start(folder)
    try:
        yield state
    finally:
        # the recovery test restarts the server: stop whatever runs from the folder now
        latest = tracking_server.read_state(folder) or state
        tracking_server.stop(folder)
        for pid in {state.mlflow_pid, latest.mlflow_pid}:
            assert not tracking_server._alive(pid), "mlflow server outlived the test"
        assert not (folder / "postgres" / "data" / "postmaster.pid").exists(), "PostgreSQL runs"
        shutil.rmtree(folder, ignore_errors=True)


def test_make_targets_use_the_server_module():
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["make", "-n", "tracking-server", "tracking-server-stop"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "magicapture_pipeline.tracking.server start --dir" in done
    assert "magicapture_pipeline.tracking.server stop --dir" in done


def _status(url: str, credentials: tuple[str, str] | None) -> int:
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_team_setting_refuses_wrong_passwords(monkeypatch):
    """--team: PostgreSQL asks for a password and MLflow's basic-auth app for credentials.

    Also: the port picked for mlflow is taken by another process before mlflow binds it (a
    full suite once failed so, "Address already in use"): start picks another and goes on."""
    folder = Path(tempfile.mkdtemp(prefix="magicapture-team-"))
    folder.chmod(0o755)
    monkeypatch.delenv(tracking_server.PG_PASSWORD_ENV, raising=False)
    monkeypatch.delenv(tracking_server.ADMIN_PASSWORD_ENV, raising=False)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    real_free_port = tracking_server.free_port
    picks = iter([real_free_port(), taken_port])  # PostgreSQL's, then mlflow's first
    monkeypatch.setattr(tracking_server, "free_port", lambda: next(picks, None) or real_free_port())
    try:
        state = tracking_server.start(folder, team=True)
    finally:
        taken.close()
    assert state.port != taken_port
    assert "Address already in use" in (folder / "mlflow-server.log").read_text(errors="replace")
    try:
        secrets_dir = folder / "secrets"
        assert oct((secrets_dir / "pg_password").stat().st_mode)[-3:] == "600"
        password = (secrets_dir / "pg_password").read_text().strip()
        admin = (secrets_dir / "admin_password").read_text().strip()
        psql = [
            str(tracking_server.pg_bin() / "psql"),
            *("-h", "127.0.0.1", "-p", str(state.pg_port), "-U", "mlflow", "-d", "mlflow"),
            *("-tAc", "SELECT 1"),
        ]

        def query(secret: str) -> subprocess.CompletedProcess:
            env = {**os.environ, "PGPASSWORD": secret}
            return subprocess.run(
                psql, env=env, capture_output=True, text=True, timeout=60, check=False
            )

        wrong = query("not-the-password")
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
        assert query(password).stdout.strip() == "1"
        assert password not in Path(f"/proc/{state.mlflow_pid}/cmdline").read_text()
        url = f"{state.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(url, None) == 401
        assert _status(url, ("admin", "not-the-password")) == 401
        assert _status(url, ("admin", admin)) == 200
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin)
        client = MlflowClient(tracking_uri=state.tracking_uri)
        try:
            experiment_id = client.create_experiment("team")
        except RestException as error:  # MLflow's client retried a create the server had
            # committed (seen once at load 12): the authenticated write went through all the same
            assert error.error_code == "RESOURCE_ALREADY_EXISTS", error
            experiment_id = client.get_experiment_by_name("team").experiment_id
        assert client.get_experiment(experiment_id).name == "team"
    finally:
        tracking_server.stop(folder)
        assert not tracking_server._alive(state.mlflow_pid)
        shutil.rmtree(folder, ignore_errors=True)


def psql(state, query: str) -> str:
    command = [str(tracking_server.pg_bin() / "psql"), "-h", "127.0.0.1", "-p",
               str(state.pg_port), "-U", "mlflow", "-d", "mlflow", "-tAc", query]
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def test_restart_after_mlflow_died_team_refused_private_and_ordinary_role(server):
    """A real PostgreSQL cluster and a real ``mlflow server``, the latter SIGKILLed: ``start``
    reuses the running cluster, refuses ``--team`` beside the unauthenticated server, and clears a
    stale ``postmaster.pid``. The module's server (its other tests are done with it); the
    restarts run one worker, as the number of workers is not what is checked here."""
    state = server
    folder = Path(state.folder)
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
    again = tracking_server.start(folder, port=state.port, workers=1, timeout=600)
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
    third = tracking_server.start(folder, workers=1, timeout=600)
    assert tracking_server._alive(third.mlflow_pid)
