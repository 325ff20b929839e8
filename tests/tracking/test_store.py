"""MLflow under concurrency: four concept runs writing to one fresh sqlite store lose nothing.

Without serialisation, three of four processes died here on a fresh database ("table datasets
already exists", each runs the schema migrations); ``tracking_store.tracking_client`` holds an
``flock`` beside the database for every call.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
import threading
import time

import pytest
from mlflow import MlflowClient

from magicapture_pipeline.tracking.store import (
    SerialisedClient,
    sqlite_lock_path,
    tracking_client,
)

WRITER = """
import sys, time
from mlflow.entities import Metric, Param
from magicapture_pipeline.tracking.store import tracking_client
uri, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = tracking_client(uri)
found = client.get_experiment_by_name(f"magicapture-{name}")
experiment = found.experiment_id if found else client.create_experiment(f"magicapture-{name}")
run = client.create_run(experiment, tags={"concept": name}).info.run_id
for step in range(steps):
    now = int(time.time() * 1000)
    client.log_batch(run, metrics=[Metric("stage_two/loss", float(step), now, step)],
                     params=[Param(f"p{step}", str(step))])
client.set_terminated(run)
print(run)
"""


@pytest.mark.slow
def test_four_concurrent_runs_on_a_fresh_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    steps = 20
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, uri, f"c{i}", str(steps)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outputs = [w.communicate(timeout=600) for w in writers]
    for writer, (out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err[-3000:]
    client = MlflowClient(tracking_uri=uri)
    for i, (out, _) in enumerate(outputs):
        run = client.get_run(out.strip().splitlines()[-1])
        assert run.info.status == "FINISHED" and run.data.tags["concept"] == f"c{i}"
        assert len(run.data.params) == steps
        history = client.get_metric_history(run.info.run_id, "stage_two/loss")
        assert sorted(m.step for m in history) == list(range(steps))


def test_calls_wait_for_the_store_lock(tmp_path, sqlite_store):
    uri = sqlite_store(tmp_path / "mlflow.db")
    client = tracking_client(uri)
    assert isinstance(client, SerialisedClient)
    lock = sqlite_lock_path(uri)
    done = []
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: done.append(client.search_experiments()))
        worker.start()
        time.sleep(0.5)
        assert done == []  # blocked while another holder has the lock
        fcntl.flock(handle, fcntl.LOCK_UN)
    worker.join(timeout=60)
    assert len(done) == 1


def test_remote_servers_get_a_plain_client():
    assert sqlite_lock_path("http://127.0.0.1:5000") is None
    assert sqlite_lock_path(None) is None
    assert not isinstance(tracking_client("http://127.0.0.1:1"), SerialisedClient)


def test_the_default_store_lock_is_git_ignored():
    """The lock beside the project's mlflow.db must not show up as an untracked file."""
    from conftest import PROJECT_ROOT

    lock = sqlite_lock_path(f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}")
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", str(lock.relative_to(PROJECT_ROOT))],
        cwd=PROJECT_ROOT, check=False,
    )
    assert done.returncode == 0, f"{lock.name} is not in .gitignore"


def _schema(path) -> list:
    """Every table and index of a sqlite store, each statement as the sorted set of its lines:
    MLflow's migrations write a table's named constraints in an order that varies between two
    fresh stores too."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
    lines = {(kind, name): sorted(line.strip(" ,") for line in (sql or "").split("\n"))
             for kind, name, sql in rows}  # fmt: skip
    return [revision, sorted(lines.items())]


def test_the_suites_store_copies_open_like_a_fresh_store(tmp_path, sqlite_store, monkeypatch):
    """``conftest.sqlite_store`` copies one migrated store instead of migrating each: a copy must
    open as MLflow's own fresh store does (its Default experiment made on first open, now, with
    this working folder's artifact root; the next experiment numbered after it; same schema)."""
    sqlite_store(tmp_path / "first.db")  # the run's template exists (made elsewhere, earlier)
    monkeypatch.chdir(tmp_path)
    seen = {}
    for name, uri in (("fresh", f"sqlite:///{tmp_path / 'fresh.db'}"),
                      ("copy", sqlite_store(tmp_path / "copy.db"))):  # fmt: skip
        opened = int(time.time() * 1000)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiments = [(e.experiment_id, e.name, e.artifact_location, e.lifecycle_stage)
                       for e in client.search_experiments()]  # fmt: skip
        created = client.create_experiment("next")
        (default,) = client.search_experiments(filter_string="name = 'Default'")
        assert default.creation_time >= opened  # made on this open, not copied
        seen[name] = (experiments, created, _schema(tmp_path / f"{name}.db"))
    assert seen["copy"] == seen["fresh"]
    assert str(tmp_path) in seen["copy"][0][0][2]  # the Default artifact root is here
