"""The tracking server's private PostgreSQL cluster (``tracking/server.py`` runs it).

As root, ``initdb`` refuses to run, so the cluster is initialised and run as the ``postgres`` user
(``runuser``), which then owns ``<dir>/postgres``. ``start_postgres`` recovers by itself after a
crash: a cluster already running in the folder is reused (its port read from ``postmaster.pid``),
and a ``postmaster.pid`` whose process is gone is removed before ``pg_ctl start``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PG_BIN_ENV = "MAGICAPTURE_PG_BIN"
DEFAULT_PG_BIN = "/usr/lib/postgresql/15/bin"
DB_USER = "mlflow"
DB_NAME = "mlflow"
ADMIN_ROLE = "magicapture_admin"  # the cluster's superuser; MLflow connects as DB_USER


class TrackingServerError(RuntimeError):
    """The tracking server could not start or stop; the message says which part and why."""


def pg_bin() -> Path | None:
    """The PostgreSQL binaries folder (``$MAGICAPTURE_PG_BIN``, Debian's 15, or on PATH)."""
    candidates = [os.environ.get(PG_BIN_ENV), DEFAULT_PG_BIN]
    found = shutil.which("pg_ctl")
    candidates.append(str(Path(found).parent) if found else None)
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _as_postgres(command: list[str]) -> list[str]:
    """Run as the ``postgres`` user when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(
    command: list[str], what: str, timeout: float = 120, env: dict | None = None,
    stdin: str | None = None,
) -> str:
    done = subprocess.run(
        command,
        input=stdin,
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


def init_cluster(
    folder: Path, binaries: Path, password: str | None = None, admin_password: str | None = None
) -> Path:
    """``initdb`` a cluster in ``folder/data`` (once): ``trust`` on loopback, or
    ``scram-sha-256`` for the team setting (the superuser :data:`ADMIN_ROLE` with
    ``admin_password``; ``start_postgres`` gives MLflow's role ``password``). Returns the data
    folder. (Clusters made before issue 21 have ``mlflow`` as their superuser, and keep it.)"""
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
    command = [str(binaries / "initdb"), "-D", str(data), "-A", mode, "-U", ADMIN_ROLE]
    command += ["-E", "UTF8"]
    if password:
        pwfile = folder / "initdb.pw"
        pwfile.write_text(admin_password or password)
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
    (folder / "admin_role").write_text(ADMIN_ROLE)
    return data


def running_port(data: Path, binaries: Path) -> int | None:
    """The port of the cluster already running in ``data`` (None: none runs there).

    A ``postmaster.pid`` left by a server that is gone (killed, machine rebooted) is removed, so
    that ``pg_ctl start`` does not stop at "another server might be running".
    """
    pid_file = data / "postmaster.pid"
    if not pid_file.is_file():
        return None
    status = subprocess.run(
        _as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "status"]),
        capture_output=True, text=True, timeout=60, check=False,
    )
    lines = pid_file.read_text().splitlines() if pid_file.is_file() else []
    if status.returncode == 0 and len(lines) > 3:
        return int(lines[3])
    pid_file.unlink(missing_ok=True)  # stale: its postmaster is gone
    return None


def start_postgres(
    folder: Path, binaries: Path, port: int, password: str | None = None,
    admin_password: str | None = None,
) -> int:
    """Start the cluster on 127.0.0.1:``port`` (socket in ``folder``), or reuse the one already
    running there, and create the ``mlflow`` role (an ordinary role, not a superuser) and its
    database. Returns the port the cluster listens on."""
    data = init_cluster(folder, binaries, password, admin_password)
    running = running_port(data, binaries)
    if running is not None:
        port = running
    else:
        options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port}"
        command = [str(binaries / "pg_ctl"), "-D", str(data), "-o", options]
        command += ["-l", str(folder / "postgres.log"), "-w", "-t", "60", "start"]
        _run(_as_postgres(command), "pg_ctl start")
    admin = (folder / "admin_role").read_text().strip() if (folder / "admin_role").is_file() else ""
    psql = [str(binaries / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", admin or DB_USER]
    psql += ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tA"]
    env = {"PGPASSWORD": (admin_password if admin else password) or ""}
    if admin and _run([*psql, "-c", f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'"],
                      "psql", env=env).strip() != "1":
        sql = f"CREATE ROLE {DB_USER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
        if password:  # through stdin, never on a command line
            sql += " PASSWORD '" + password.replace("'", "''") + "'"
        _run([*psql, "-f", "-"], "create role", env=env, stdin=sql + ";\n")
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"
    if _run([*psql, "-c", query], "psql", env=env).strip() != "1":
        owner = f" OWNER {DB_USER}" if admin else ""
        _run([*psql, "-c", f"CREATE DATABASE {DB_NAME}{owner}"], "create database", env=env)
    return port


def stop_postgres(folder: Path, binaries: Path) -> None:
    """``pg_ctl stop -m fast`` (nothing when it is not running)."""
    data = folder / "data"
    if not (data / "postmaster.pid").is_file():
        return
    _run(
        _as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
        "pg_ctl stop",
    )


