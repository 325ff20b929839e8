"""A registration that hits a full disk leaves the registry as it was (issue 14 §1).

The registered model's files are saved to a temporary folder and logged under the new run; only
when that succeeded is a version created and ``@candidate`` moved. Here the second registration's
artifact store is a real 64 kB tmpfs: it fails with ENOSPC naming a path on it, and the registered
model keeps exactly its first version and aliases.
"""

from __future__ import annotations

import errno

import pytest
from mlflow import MlflowClient
from test_registry import MODEL, SAMPLING, aliases, tiny_concept  # noqa: F401 (a fixture)

from full_disk import tiny_tmpfs
from magicapture_pipeline.config.serving import ServingConfig
from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.pipelines.register.nodes import register_concept


@pytest.mark.slow
def test_full_artifact_disk_registers_nothing(tmp_path, tiny_concept):  # noqa: F811
    base, concept = tiny_concept
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with tiny_tmpfs(tmp_path / "disk") as disk:
        config = RegistryConfig(model_name=MODEL)  # sampling lives in SAMPLING (one home)
        metrics = {"csim_arcface": 0.5, "unavailable": {}}
        roomy = client.create_experiment("roomy", artifact_location=(tmp_path / "a").as_uri())
        full = client.create_experiment("full", artifact_location=disk.as_uri())
        first = client.create_run(roomy)
        register_concept(concept, {"path": str(base)}, metrics,
                         {"run_id": first.info.run_id, "tracking_uri": uri}, config, SAMPLING,
                         ServingConfig())
        before = aliases(client)
        second = client.create_run(full)
        with pytest.raises(OSError) as caught:
            register_concept(concept, {"path": str(base)}, metrics,
                             {"run_id": second.info.run_id, "tracking_uri": uri}, config, SAMPLING,
                             ServingConfig())
        error = caught.value
        assert error.errno == errno.ENOSPC
        assert str(disk) in f"{error.filename} {error.filename2} {error}"
        assert [int(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == [1]
        assert aliases(client) == before == {"candidate": 1}
