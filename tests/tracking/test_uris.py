"""``serving.uris.tracking``: MLflow's process-wide URIs, set for one block, restored after."""

from __future__ import annotations

import os

import pytest

from magicapture_pipeline.tracking.uris import REGISTRY_URI_ENV, tracking


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
