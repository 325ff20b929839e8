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
For a team or a cluster see the README ("Tracking server"): MLflow's basic-auth app, a PostgreSQL
password (``scram-sha-256``), and an S3/MinIO artifact store.

As root, ``initdb`` refuses to run, so the cluster is initialised and run as the ``postgres`` user
(``runuser``), which then owns ``<dir>/postgres``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

PG_BIN_ENV = "MAGICAPTURE_PG_BIN"
DEFAULT_PG_BIN = "/usr/lib/postgresql/15/bin"
DB_USER = "mlflow"
DB_NAME = "mlflow"
STATE_FILE = "server.json"


class TrackingServerError(RuntimeError):
    """The tracking server could not start or stop; the message says which part and why."""


@dataclass
class ServerState:
    """What ``start`` started (written to ``<dir>/server.json``)."""

    folder: str
    pg_port: int
    port: int
    mlflow_pid: int
    backend_store_uri: str
    artifacts: str

    @property
    def tracking_uri(self) -> str:
        """The URI clients export as ``MLFLOW_TRACKING_URI``."""
        return f"http://127.0.0.1:{self.port}"


def pg_bin() -> Path | None:
    """The PostgreSQL binaries folder (``$MAGICAPTURE_PG_BIN``, Debian's 15, or on PATH)."""
    candidates = [os.environ.get(PG_BIN_ENV), DEFAULT_PG_BIN]
    found = shutil.which("pg_ctl")
    candidates.append(str(Path(found).parent) if found else None)
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """Run as the ``postgres`` user when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str, timeout: float = 120) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise TrackingServerError(
            f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def init_cluster(folder: Path, binaries: Path) -> Path:
    """``initdb`` a cluster in ``folder/data`` (once); returns the data folder."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if (data / "PG_VERSION").is_file():
        return data
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    _run(
        _as_postgres(
            [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", DB_USER, "-E", "UTF8"]
        ),
        "initdb",
    )
    return data


def start_postgres(folder: Path, binaries: Path, port: int) -> None:
    """Start the cluster on 127.0.0.1:``port`` (socket in ``folder``) and create the database."""
    data = init_cluster(folder, binaries)
    options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port}"
    _run(
        _as_postgres(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(folder / "postgres.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        "pg_ctl start",
    )
    psql = [
        str(binaries / "psql"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        DB_USER,
        "-d",
        "postgres",
        "-tAc",
    ]
    exists = _run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"], "psql")
    if exists.strip() != "1":
        _run([*psql, f"CREATE DATABASE {DB_NAME}"], "create database")


def stop_postgres(folder: Path, binaries: Path) -> None:
    """``pg_ctl stop -m fast`` (nothing when it is not running)."""
    data = folder / "data"
    if not (data / "postmaster.pid").is_file():
        return
    _run(
        _as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
        "pg_ctl stop",
    )


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
) -> ServerState:
    """Start PostgreSQL and ``mlflow server`` (see the module docstring); returns their state."""
    folder = Path(folder).resolve()
    if (folder / STATE_FILE).is_file():
        state = read_state(folder)
        if state is not None and _alive(state.mlflow_pid):
            return state
    binaries = pg_bin()
    if binaries is None:
        raise TrackingServerError(
            f"PostgreSQL binaries not found (looked in ${PG_BIN_ENV}, {DEFAULT_PG_BIN} and "
            "PATH); install Debian's `postgresql` (apt-get install postgresql)"
        )
    pg_port = pg_port or free_port()
    port = port or free_port()
    start_postgres(folder / "postgres", binaries, pg_port)
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    backend = f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/{DB_NAME}"
    log = (folder / "mlflow-server.log").open("ab")
    binary = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [
            str(binary),
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            artifacts.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PATH": f"{binary.parent}:{os.environ.get('PATH', '')}"},
    )
    state = ServerState(str(folder), pg_port, port, process.pid, backend, str(artifacts))
    (folder / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    try:
        wait_for_http(f"{state.tracking_uri}/health", timeout, process)
    except TrackingServerError as error:
        stop(folder)
        tail = (folder / "mlflow-server.log").read_text(errors="replace")[-3000:]
        raise TrackingServerError(f"mlflow server did not start: {error}\n{tail}") from error
    return state


def read_state(folder: Path) -> ServerState | None:
    """The state ``start`` wrote, or None."""
    path = Path(folder) / STATE_FILE
    return ServerState(**json.loads(path.read_text())) if path.is_file() else None


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop(folder: Path, grace: float = 30) -> None:
    """Stop ``mlflow server`` (its whole process group) and PostgreSQL; the data stays."""
    folder = Path(folder).resolve()
    state = read_state(folder)
    if state is not None and _alive(state.mlflow_pid):
        os.killpg(state.mlflow_pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(state.mlflow_pid) and time.monotonic() < deadline:
            try:  # reap it when it is our child (tests); otherwise init does
                os.waitpid(state.mlflow_pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.5)
        if _alive(state.mlflow_pid):
            os.killpg(state.mlflow_pid, signal.SIGKILL)
    binaries = pg_bin()
    if binaries is not None:
        stop_postgres(folder / "postgres", binaries)
    (folder / STATE_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """``start`` / ``stop`` / ``status`` from the command line."""
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.tracking.server")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default=".tracking", help="cluster, artifacts, logs, state")
    parser.add_argument("--port", type=int, default=5002, help="mlflow server port")
    parser.add_argument("--pg-port", type=int, default=None, help="PostgreSQL port (free one)")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server workers")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if args.action == "stop":
        stop(folder)
        print(f"stopped the tracking server in {folder}")  # noqa: T201 - command-line answer
        return
    if args.action == "status":
        state = read_state(folder)
        alive = state is not None and _alive(state.mlflow_pid)
        print(json.dumps({"running": alive, **(asdict(state) if state else {})}, indent=2))  # noqa: T201
        return
    state = start(folder, args.port, args.pg_port, args.workers)
    print(  # noqa: T201 - command-line answer
        f"MLflow tracking server on {state.tracking_uri} (PostgreSQL 127.0.0.1:{state.pg_port}, "
        f"artifacts {state.artifacts})\n  export MLFLOW_TRACKING_URI={state.tracking_uri}\n"
        "  stop it with: make tracking-server-stop"
    )


if __name__ == "__main__":
    main()
