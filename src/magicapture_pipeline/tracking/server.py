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

As root, ``initdb`` refuses to run, so the cluster is initialised and run as the ``postgres`` user
(``runuser``), which then owns ``<dir>/postgres``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
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
PG_PASSWORD_ENV = "MAGICAPTURE_PG_PASSWORD"
ADMIN_PASSWORD_ENV = "MAGICAPTURE_MLFLOW_ADMIN_PASSWORD"
ADMIN_USER = "admin"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"


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
    team: bool = False
    host: str = "127.0.0.1"

    @property
    def tracking_uri(self) -> str:
        """The URI clients export as ``MLFLOW_TRACKING_URI``."""
        return f"http://{self.host}:{self.port}"


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


def _run(command: list[str], what: str, timeout: float = 120, env: dict | None = None) -> str:
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise TrackingServerError(
            f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return done.stdout


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


def init_cluster(folder: Path, binaries: Path, password: str | None = None) -> Path:
    """``initdb`` a cluster in ``folder/data`` (once): ``trust`` on loopback, or
    ``scram-sha-256`` with ``password`` for the team setting. Returns the data folder."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    mode = "scram-sha-256" if password else "trust"
    if (data / "PG_VERSION").is_file():
        existing = (folder / "auth").read_text().strip() if (folder / "auth").is_file() else ""
        if existing and existing != mode:
            raise TrackingServerError(
                f"the cluster in {data} was initialised with {existing} authentication, not "
                f"{mode}: use another --dir for the other setting"
            )
        return data
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    command = [str(binaries / "initdb"), "-D", str(data), "-A", mode, "-U", DB_USER, "-E", "UTF8"]
    if password:
        pwfile = folder / "initdb.pw"
        pwfile.write_text(password)
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres")
        command.append(f"--pwfile={pwfile}")
    try:
        _run(_as_postgres(command), "initdb")
    finally:
        if password:
            (folder / "initdb.pw").unlink(missing_ok=True)
    (folder / "auth").write_text(mode)
    return data


def start_postgres(folder: Path, binaries: Path, port: int, password: str | None = None) -> None:
    """Start the cluster on 127.0.0.1:``port`` (socket in ``folder``) and create the database."""
    data = init_cluster(folder, binaries, password)
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
    env = {"PGPASSWORD": password} if password else {}
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"
    exists = _run([*psql, query], "psql", env=env)
    if exists.strip() != "1":
        _run([*psql, f"CREATE DATABASE {DB_NAME}"], "create database", env=env)


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
    team: bool = False,
    host: str = "127.0.0.1",
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
    password = secret(folder, "pg_password", PG_PASSWORD_ENV) if team else None
    start_postgres(folder / "postgres", binaries, pg_port, password)
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    backend = f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/{DB_NAME}"
    log = (folder / "mlflow-server.log").open("ab")
    binary = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "PATH": f"{binary.parent}:{os.environ.get('PATH', '')}"}
    command = [str(binary), "server", "--backend-store-uri", backend]
    command += ["--artifacts-destination", artifacts.as_uri(), "--host", host]
    command += ["--port", str(port), "--workers", str(workers)]
    if team:
        env["PGPASSWORD"] = password  # libpq reads it; never on the command line
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(folder))
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = secret(folder, "admin_password", ADMIN_PASSWORD_ENV)
        # the auth app's CSRF protection needs one key shared by every worker
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret(folder, "flask_secret_key", SECRET_KEY_ENV)
        command += ["--app-name", "basic-auth"]
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    state = ServerState(
        str(folder), pg_port, port, process.pid, backend, str(artifacts), team, host
    )
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


def _alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` still runs (zombies, which wait for their parent
    to reap them, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    try:  # our child (tests): collect its exit status; otherwise init does
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(folder: Path, grace: float = 30) -> None:
    """Stop ``mlflow server`` (its whole process group) and PostgreSQL; the data stays."""
    folder = Path(folder).resolve()
    state = read_state(folder)
    if state is not None and _alive(state.mlflow_pid):
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
    parser.add_argument(
        "--team",
        action="store_true",
        help="PostgreSQL password + MLflow basic-auth (passwords: env or <dir>/secrets/)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface mlflow server binds")
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
    state = start(folder, args.port, args.pg_port, args.workers, team=args.team, host=args.host)
    print(  # noqa: T201 - command-line answer
        f"MLflow tracking server on {state.tracking_uri} (PostgreSQL 127.0.0.1:{state.pg_port}, "
        f"artifacts {state.artifacts})\n  export MLFLOW_TRACKING_URI={state.tracking_uri}\n"
        "  stop it with: make tracking-server-stop"
    )


if __name__ == "__main__":
    main()
