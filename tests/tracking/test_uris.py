"""``tracking.uris``: the one tracking-URI rule; MLflow's process-wide URIs set for one block."""

from __future__ import annotations

import os

import pytest

from magicapture_pipeline.tracking.uris import (
    REGISTRY_URI_ENV,
    resolve_tracking_uri,
    tracking,
    tracking_disabled_by_env,
    tracking_section,
)


@pytest.mark.parametrize("before", [None, "sqlite:////elsewhere/mlflow.db"])
def test_the_registry_uri_does_not_leak_into_later_subprocesses(monkeypatch, tmp_path, before):
    """mlflow.set_registry_uri exports MLFLOW_REGISTRY_URI; left set, every process started later
    (a batch worker, a `kedro run`) registered into the block's store (seen: a batch test's
    concepts registered into an earlier test's database)."""
    if before is None:
        monkeypatch.delenv(REGISTRY_URI_ENV, raising=False)
    else:
        monkeypatch.setenv(REGISTRY_URI_ENV, before)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking(uri):
        assert os.environ[REGISTRY_URI_ENV] == uri  # inside: children see the block's store
    assert os.environ.get(REGISTRY_URI_ENV) == before


def test_the_private_mlflow_names_tracking_relies_on_exist():
    """``tracking()`` uses two private MLflow 3.17 names: an upgrade that moves them fails here,
    loudly, instead of a registration silently using the wrong store."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    assert hasattr(registry_utils, "_registry_uri")
    assert callable(getattr(tracking_utils, "_use_tracking_uri", None))


def test_one_rule_for_the_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(tmp_path, "sqlite:///other.db") == "sqlite:///other.db"
    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "off")
    assert tracking_disabled_by_env()
    monkeypatch.setenv("MAGICAPTURE_MLFLOW", "1")
    assert not tracking_disabled_by_env()


def test_tracking_section_reads_dicts_and_typed_parameters():
    from magicapture_pipeline.config.tracking import TrackingConfig

    assert tracking_section({}) == {}
    assert tracking_section({"tracking": {"enabled": False}}) == {"enabled": False}
    typed = tracking_section({"tracking": TrackingConfig(experiment_name="x")})
    assert typed["experiment_name"] == "x"
