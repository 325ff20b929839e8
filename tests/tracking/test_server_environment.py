"""The environment of the ``mlflow server`` processes this project starts (tracking server, the
spool and run-page tests, the run-page screenshot script): no MLflow job runner unless asked."""

from pathlib import Path

from magicapture_pipeline.tracking.server import JOBS_ENV, server_environment


def test_no_job_runner_by_default_and_the_users_choice_wins(monkeypatch):
    binary = Path("/opt/venv/bin/mlflow")
    monkeypatch.delenv(JOBS_ENV, raising=False)
    env = server_environment(binary)
    assert env[JOBS_ENV] == "false"
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    monkeypatch.setenv(JOBS_ENV, "true")
    assert server_environment(binary)[JOBS_ENV] == "true"
