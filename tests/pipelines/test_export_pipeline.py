"""``kedro run --pipelines=export`` as a user runs it, in a project copy: from the concept
folder (the same files ``make export`` writes; a real ``kedro`` process), from a registered
version by alias and by number (its run's grid in the card), and a path-like alias refused before
anything runs (these three through Kedro's command line in this process: ``run_kedro_here``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image
from safetensors.torch import load_file

from conftest import run_kedro, run_kedro_here
from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.config.serving import ServingConfig
from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.export import main
from magicapture_pipeline.pipelines.register.nodes import register_concept
from magicapture_pipeline.serving.export_source import GRID_FILE, grid_artifact_path
from tiny_sdxl import write_sd_concept

RECORDS = (
    "key,prompt,template,prompt_index,sample_index,seed,seconds,base_model,scheduler,"
    "num_inference_steps,guidance_scale,lora_scale_unet,lora_scale_text_encoder,resolution,"
    "negative_prompt,dtype,device,watermarked\n"
    "p00_s000,x,x,0,0,0,1.0,b,euler_ancestral,3,6.5,0.6,0.9,64,,float32,cpu,False\n"
)
EXPORT = ("run", "--pipelines=export", "--env=demo")


def _front(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])


def _register(project: Path, tiny_dir: Path, grid: Path) -> None:
    """Version 1 of magicapture-alice (@candidate) in the copy's store, its run holding a grid."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(project / "art").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "csim_dlib", 0.7)
    client.log_artifact(run.info.run_id, str(grid), grid_artifact_path().rsplit("/", 1)[0])
    register_concept(
        project / "data/06_models/alice/concept", {"path": str(tiny_dir), "tiny": True},
        {"csim_dlib": 0.7, "unavailable": {}},
        {"run_id": run.info.run_id, "tracking_uri": uri, "project_path": str(project)},
        RegistryConfig(model_name="magicapture-alice", gallery_prompts=0),
        GenerationConfig(num_inference_steps=4, guidance_scale=5.0), ServingConfig(),
    )  # fmt: skip
    client.set_terminated(run.info.run_id)


@pytest.mark.integration
@pytest.mark.slow
def test_export_pipeline_from_folder_and_registry(project_copy: Path, tiny_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MAGICAPTURE_MLFLOW", raising=False)
    models = project_copy / "data/06_models/alice"
    write_sd_concept(tiny_dir, models / "concept")
    reports = project_copy / "data/08_reporting/alice"
    reports.mkdir(parents=True)
    (reports / "metrics.json").write_text(json.dumps({"csim_dlib": 0.3, "n_images": 2.0}))
    Image.new("RGB", (8, 4), (200, 10, 10)).save(reports / "generation_grid.png")
    records = project_copy / "data/07_model_output/alice/generation_records.csv"
    records.parent.mkdir(parents=True)
    records.write_text(RECORDS)

    done = run_kedro(project_copy, *EXPORT, "--params=concept=alice")
    assert done.returncode == 0, done.stderr[-4000:]
    out = models / "export"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "diffusers", "embeddings", "loras", "sample_grid.png"]  # fmt: skip
    magic = _front(out)["magicapture"]
    assert magic["source"] == "concept folder data/06_models/alice/concept"
    assert (magic["steps"]["value"], magic["cfg"]["value"]) == (3, 6.5)  # the records' settings
    assert magic["evaluation"]["figures"]["csim_dlib"] == {"value": 0.3, "n": 2}
    # make export writes the same files (the same code): tensors, names, card settings
    cli = ["--concept", "alice", "--project", str(project_copy), "--out", str(models / "cli")]
    assert main(cli) == 0
    for name in ("loras/alice.safetensors", "embeddings/alice_v1.safetensors"):
        ours, theirs = load_file(str(out / name)), load_file(str(models / "cli" / name))
        assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    assert _front(models / "cli")["magicapture"] == magic

    grid = project_copy / "run" / GRID_FILE  # logged under the name the hook logs it with
    grid.parent.mkdir()
    Image.new("RGB", (5, 5), (0, 0, 250)).save(grid)
    _register(project_copy, tiny_dir, grid)
    for params, folder in (("export.alias=candidate", "export-candidate"),
                           ("export.model_version=1", "export-v1")):  # fmt: skip
        done = run_kedro_here(project_copy, *EXPORT, f"--params=concept=alice,{params}")
        assert done.returncode == 0, done.stderr[-4000:]
        magic = _front(models / folder)["magicapture"]
        assert magic["source"].startswith("models:/magicapture-alice")
        assert "(version 1, run " in magic["source"]
        assert (magic["steps"]["value"], magic["cfg"]["value"]) == (4, 5.0)  # as registered
        assert Image.open(models / folder / "sample_grid.png").getpixel((0, 0)) == (0, 0, 250)
        assert grid_artifact_path() in magic["sample_grid"]["origin"]
    assert _front(out)["magicapture"]["steps"]["value"] == 3  # the folder export is untouched
    # each export run keeps the model card and grid it wrote, not the weights
    store = MlflowClient(tracking_uri=f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = store.search_runs([store.get_experiment_by_name("magicapture-alice").experiment_id])
    kept = [sorted(f.path for f in store.list_artifacts(r.info.run_id, "export")) for r in runs]
    assert kept == [["export/README.md", "export/sample_grid.png"]] * 3, kept

    done = run_kedro_here(project_copy, *EXPORT, "--params=concept=alice,export.alias=../x")
    assert done.returncode != 0 and "params:export.alias" in done.stdout + done.stderr
    assert not (project_copy / "data/06_models/x").exists()
