"""The export pipeline's model card reaches the run that wrote it (issue 22 leftover): the card
and its sample grid, not the exported weights (the registered version holds those)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


class _Catalog:
    def __init__(self, **datasets):
        self.datasets = datasets

    def get(self, name):
        return self.datasets.get(name)


def _export_folder(folder: Path) -> dict:
    """What ``ExportRequest.write`` leaves and returns, for a folder with weights, card, grid."""
    (folder / "loras").mkdir(parents=True)
    (folder / "loras" / "alice.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("---\nmagicapture: {}\n---\n# alice\n")
    Image.new("RGB", (4, 4), (0, 0, 250)).save(folder / "sample_grid.png")
    return {"out": str(folder), "lora": "loras/alice.safetensors", "grid": "sample_grid.png",
            "card": str(folder / "README.md")}  # fmt: skip


def test_the_export_card_and_grid_are_logged_to_the_run_not_the_weights(tmp_path, sqlite_store):
    from mlflow.tracking import MlflowClient

    from magicapture_pipeline.config.tracking import TrackingConfig
    from magicapture_pipeline.datasets.concept_export import ConceptExportDataset
    from magicapture_pipeline.tracking.hook import MlflowTrackingHook, _ActiveRun

    uri = sqlite_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    dataset = ConceptExportDataset(path=str(tmp_path / "data" / "export"))
    dataset.last_written = _export_folder(tmp_path / "data" / "export")
    hook = MlflowTrackingHook()
    catalog = _Catalog(concept_export=dataset)
    hook._run = _ActiveRun(client, run_id, "0", uri, TrackingConfig(), catalog=catalog)
    hook.after_dataset_saved("concept_export", None, node=None)

    logged = sorted(f.path for f in client.list_artifacts(run_id, "export"))
    assert logged == ["export/README.md", "export/sample_grid.png"]
    card = client.download_artifacts(run_id, "export/README.md", str(tmp_path / "down"))
    assert Path(card).read_text().endswith("# alice\n")
    # before any save the dataset names nothing, and nothing is logged
    assert ConceptExportDataset(path=str(tmp_path / "other")).tracked_files() == []
