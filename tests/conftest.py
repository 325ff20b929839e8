"""Shared test fixtures: a throw-away copy of the project to run Kedro in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


def copy_project(dest: Path) -> Path:
    """Copy what a Kedro run needs (conf, pyproject, empty data tree) into ``dest``.

    The package itself is imported from the editable install, so ``src`` is not copied.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(
        PROJECT_ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local")
    )
    (dest / "conf" / "local").mkdir(exist_ok=True)
    # Kedro checks that the project's source folder exists, even though the package is imported
    # from the editable install.
    (dest / "src").mkdir(exist_ok=True)
    for folder in sorted((PROJECT_ROOT / "data").iterdir()):
        if folder.is_dir():
            (dest / "data" / folder.name).mkdir(parents=True, exist_ok=True)
    return dest


def run_kedro(project: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``kedro <args>`` in ``project`` as a user would, returning the finished process."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return subprocess.run(
        [sys.executable, "-m", "kedro", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A fresh copy of the project in a temporary folder (data/ empty)."""
    return copy_project(tmp_path / "project")
