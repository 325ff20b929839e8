"""A shared MLflow tracking server: a private PostgreSQL 15 cluster + ``mlflow server`` (loopback).

``python -m magicapture_pipeline.tracking.server start|stop|status [--dir .tracking]``
(``make tracking-server`` / ``make tracking-server-stop``). ``start`` initialises a PostgreSQL
cluster in ``<dir>/postgres`` on first use (Debian's ``postgresql`` binaries; nothing system-wide
is configured or started), starts it on 127.0.0.1, creates the ``mlflow`` database, and starts
``mlflow server`` on 127.0.0.1 with that database as backend store and ``<dir>/artifacts`` as
artifact store (served through the server: clients upload with ``mlflow-artifacts:/``). It prints
the ``MLFLOW_TRACKING_URI`` to export; every command of the project then uses it. ``stop`` stops
both; the data stays for the next ``start``.

Loopback only, and PostgreSQL trusts local connections on 127.0.0.1: the single-machine default.
``--team`` is the setting for a shared server: PostgreSQL with a password (``scram-sha-256``; the
server gets it through ``PGPASSWORD``, never on a command line) and MLflow's ``basic-auth`` app
(users and permissions; ``default_permission = NO_PERMISSIONS``). Passwords come from
``$MAGICAPTURE_PG_PASSWORD`` / ``$MAGICAPTURE_MLFLOW_ADMIN_PASSWORD`` or are generated into
``<dir>/secrets/`` (mode 0600). It still binds 127.0.0.1 unless ``--host`` says otherwise: put TLS
in front of it (basic auth sends the password with every request). See the README for S3/MinIO.

The cluster itself is ``tracking/postgres.py``: its superuser is ``magicapture_admin``; MLflow
connects as ``mlflow``, an ordinary role that owns its database. ``<dir>`` is private (0700; as
root 0710 with group ``postgres``, which runs the cluster), and the server writes with umask 077.

Recovery and refusals (issue 21 §3): ``start`` after the mlflow server died reuses the PostgreSQL
still running (or clears a stale ``postmaster.pid``) and starts a new server; ``start --team`` while
the unauthenticated server runs from the same ``<dir>`` (or the reverse) refuses, exit 1, naming
it; ``stop`` prints what it stopped.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from magicapture_pipeline.core import procfs
from magicapture_pipeline.tracking.postgres import (  # noqa: F401 - re-exported for callers
    DB_NAME,
    DB_USER,
    DEFAULT_PG_BIN,
    PG_BIN_ENV,
    TrackingServerError,
    pg_bin,
    start_postgres,
    stop_postgres,
)

STATE_FILE = "server.json"
PG_PASSWORD_ENV = "MAGICAPTURE_PG_PASSWORD"
ADMIN_PASSWORD_ENV = "MAGICAPTURE_MLFLOW_ADMIN_PASSWORD"
PG_ADMIN_PASSWORD_ENV = "MAGICAPTURE_PG_ADMIN_PASSWORD"
ADMIN_USER = "admin"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"


@dataclass
class ServerState:
    """What ``start`` started (written to ``<dir>/server.json``)."""

    folder: str
    pg_port: int
    port: int
    mlflow_pid: int
    backend_store_uri: str
    artifacts: str
    team: bool = False
    host: str = "127.0.0.1"

    @property
    def tracking_uri(self) -> str:
        """The URI clients export as ``MLFLOW_TRACKING_URI``."""
        return f"http://{self.host}:{self.port}"


PORT_ATTEMPTS = 3  # launches of mlflow server on a port we picked, when another process took it


JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
"""MLflow 3 starts a Huey job runner with each ``mlflow server`` (six ``huey_consumer`` processes,
each importing MLflow: 33 of the 47 CPU seconds a two-worker server spent starting here, 33 of
43 with one worker) for its GenAI jobs (prompt optimisation, scorers, trace roll-ups). No command
of this project submits a job, so servers it starts run without one (ours); a value the user
exports still wins."""


def server_environment(binary: Path) -> dict[str, str]:
    """The environment of an ``mlflow server`` this project starts: the venv's ``bin`` first on
    ``PATH`` (the server starts ``uvicorn`` by name) and no job runner unless the user asks
    for one (``JOBS_ENV``)."""
    env = {**os.environ, "PATH": f"{binary.parent}:{os.environ.get('PATH', '')}"}
    env.setdefault(JOBS_ENV, "false")
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def secret(folder: Path, name: str, env: str) -> str:
    """``$env``, else ``<folder>/secrets/<name>`` (generated once, mode 0600)."""
    if os.environ.get(env):
        return os.environ[env]
    path = folder / "secrets" / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def auth_config(folder: Path) -> Path:
    """MLflow's basic-auth config for the team setting: users in ``<dir>/basic_auth.db``, no
    permission unless granted; the admin password comes from the environment."""
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return path


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (raises when ``process`` dies or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TrackingServerError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TrackingServerError(f"{url} did not answer within {timeout:.0f} s")


def start(
    folder: Path,
    port: int | None = None,
    pg_port: int | None = None,
    workers: int = 2,
    timeout: float = 180,
    team: bool = False,
    host: str = "127.0.0.1",
) -> ServerState:
    """Start PostgreSQL and ``mlflow server`` (see the module docstring); returns their state."""
    folder = Path(folder).resolve()
    if (folder / STATE_FILE).is_file():
        state = read_state(folder)
        if state is not None and _alive(state.mlflow_pid):
            if state.team != team:
                running = "with authentication (--team)" if state.team else "WITHOUT authentication"
                raise TrackingServerError(
                    f"a tracking server {running} already runs from {folder} on "
                    f"{state.tracking_uri}: stop it first (make tracking-server-stop), or give "
                    "the other setting its own --dir and --port"
                )
            return state
    binaries = pg_bin()
    if binaries is None:
        raise TrackingServerError(
            f"PostgreSQL binaries not found (looked in ${PG_BIN_ENV}, {DEFAULT_PG_BIN} and "
            "PATH); install Debian's `postgresql` (apt-get install postgresql)"
        )
    make_private(folder)
    pg_port = pg_port or free_port()
    chosen = port is None  # ours to pick again if another process takes it before mlflow binds
    password = secret(folder, "pg_password", PG_PASSWORD_ENV) if team else None
    admin = secret(folder, "pg_admin_password", PG_ADMIN_PASSWORD_ENV) if team else None
    # a cluster still running from before (the mlflow server died) is reused, port and all
    pg_port = start_postgres(folder / "postgres", binaries, pg_port, password, admin)
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    backend = f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/{DB_NAME}"
    log_path = folder / "mlflow-server.log"
    binary = Path(sys.executable).parent / "mlflow"
    env = server_environment(binary)
    command = [str(binary), "server", "--backend-store-uri", backend]
    command += ["--artifacts-destination", artifacts.as_uri(), "--host", host]
    command += ["--workers", str(workers)]
    if team:
        env["PGPASSWORD"] = password  # libpq reads it; never on the command line
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(folder))
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = secret(folder, "admin_password", ADMIN_PASSWORD_ENV)
        # the auth app's CSRF protection needs one key shared by every worker
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret(folder, "flask_secret_key", SECRET_KEY_ENV)
        command += ["--app-name", "basic-auth"]
    for attempt in range(PORT_ATTEMPTS):
        # picked just before the launch, never PostgreSQL's: a port picked before the seconds
        # PostgreSQL takes to start was once taken meanwhile ("Address already in use")
        if chosen:
            port = free_port()
            while port == pg_port:
                port = free_port()
        logged = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*command, "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                umask=0o077,  # artifacts, the auth database: private to the server's user
            )
        state = ServerState(
            str(folder), pg_port, port, process.pid, backend, str(artifacts), team, host
        )
        (folder / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        try:
            wait_for_http(f"{state.tracking_uri}/health", timeout, process)
            return state
        except TrackingServerError as error:
            with log_path.open("rb") as log:
                log.seek(logged)
                this_try = log.read().decode(errors="replace")
            if chosen and attempt + 1 < PORT_ATTEMPTS and "Address already in use" in this_try:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                continue  # PostgreSQL stays up for the next port
            stop(folder)
            tail = log_path.read_text(errors="replace")[-3000:]
            raise TrackingServerError(f"mlflow server did not start: {error}\n{tail}") from error
    raise AssertionError("unreachable: the last attempt returns or raises")


def make_private(folder: Path) -> None:
    """``folder`` readable by its owner only (0700). As root, the cluster runs as ``postgres``,
    which must pass through it: 0710 with group ``postgres`` (it can enter, not list or read)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(folder, 0, grp.getgrnam("postgres").gr_gid)
        folder.chmod(0o710)
    else:
        folder.chmod(0o700)


def read_state(folder: Path) -> ServerState | None:
    """The state ``start`` wrote, or None."""
    path = Path(folder) / STATE_FILE
    return ServerState(**json.loads(path.read_text())) if path.is_file() else None


def _alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` still runs (zombies, which wait for their parent
    to reap them, do not count)."""
    return next(procfs.group_members(pgid), None) is not None


def _reap(pid: int) -> None:
    try:  # our child (tests): collect its exit status; otherwise init does
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(folder: Path, grace: float = 30) -> list[str]:
    """Stop ``mlflow server`` (its whole process group) and PostgreSQL; the data stays.

    Returns what it stopped, one line each (empty: nothing was running)."""
    folder = Path(folder).resolve()
    state = read_state(folder)
    stopped = []
    if state is not None and _alive(state.mlflow_pid):
        kind = "team (authenticated)" if state.team else "unauthenticated"
        stopped.append(f"mlflow server ({kind}) on {state.tracking_uri}, pid {state.mlflow_pid}")
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(state.mlflow_pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while _alive(state.mlflow_pid) and time.monotonic() < deadline:
                _reap(state.mlflow_pid)
                time.sleep(0.5)
            _reap(state.mlflow_pid)
            if not _alive(state.mlflow_pid):
                break
    binaries = pg_bin()
    if binaries is not None and (folder / "postgres" / "data" / "postmaster.pid").is_file():
        stop_postgres(folder / "postgres", binaries)
        stopped.append(f"PostgreSQL cluster in {folder / 'postgres' / 'data'}")
    (folder / STATE_FILE).unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> None:
    """``start`` / ``stop`` / ``status`` from the command line."""
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.tracking.server")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default=".tracking", help="cluster, artifacts, logs, state")
    parser.add_argument("--port", type=int, default=5002, help="mlflow server port")
    parser.add_argument("--pg-port", type=int, default=None, help="PostgreSQL port (free one)")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server workers")
    parser.add_argument(
        "--team",
        action="store_true",
        help="PostgreSQL password + MLflow basic-auth (passwords: env or <dir>/secrets/)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface mlflow server binds")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if args.action == "stop":
        stopped = stop(folder)
        for line in stopped or [f"nothing was running from {folder}"]:
            print(f"stopped: {line}" if stopped else line)  # noqa: T201 - command-line answer
        return
    if args.action == "status":
        state = read_state(folder)
        alive = state is not None and _alive(state.mlflow_pid)
        print(json.dumps({"running": alive, **(asdict(state) if state else {})}, indent=2))  # noqa: T201
        return
    try:
        state = start(
            folder, args.port, args.pg_port, args.workers, team=args.team, host=args.host
        )
    except TrackingServerError as error:
        sys.exit(f"tracking server: {error}")
    print(  # noqa: T201 - command-line answer
        f"MLflow tracking server on {state.tracking_uri} (PostgreSQL 127.0.0.1:{state.pg_port}, "
        f"artifacts {state.artifacts})\n  export MLFLOW_TRACKING_URI={state.tracking_uri}\n"
        "  stop it with: make tracking-server-stop"
    )


if __name__ == "__main__":
    main()
