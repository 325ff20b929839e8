"""``python -m magicapture_pipeline.export`` (``make export``): from the concept folder with its
metrics.json, from a registered version (its sampling settings and its run's metrics), and
refusals that write nothing."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image
from test_kohya_roundtrip import _sd_concept

from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.config.serving import ServingConfig
from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.export import main
from magicapture_pipeline.pipelines.register.nodes import register_concept


def _front(folder) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])


def test_export_from_the_concept_folder_and_refusals(tiny_dir, tmp_path, capsys):
    models = tmp_path / "data" / "06_models" / "alice"
    _sd_concept(tiny_dir, models / "concept")
    reports = tmp_path / "data" / "08_reporting" / "alice"
    reports.mkdir(parents=True)
    (reports / "metrics.json").write_text(json.dumps({"csim_dlib": 0.3, "n_images": 6.0}))
    Image.new("RGB", (8, 4), (200, 10, 10)).save(reports / "generation_grid.png")
    assert main(["--concept", "alice", "--project", str(tmp_path), "--format", "kohya"]) == 0
    out = models / "export"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "embeddings", "loras", "sample_grid.png"]  # fmt: skip
    assert Image.open(out / "sample_grid.png").getpixel((0, 0)) == (200, 10, 10)
    assert _front(out)["widget"][0]["output"]["url"] == "sample_grid.png"
    assert _front(out)["magicapture"]["evaluation"]["figures"]["csim_dlib"] == {
        "value": 0.3, "n": 6}  # fmt: skip
    capsys.readouterr()
    assert main(["--concept", "bob", "--project", str(tmp_path)]) == 2
    assert "06_models/bob/concept: no concept folder" in capsys.readouterr().err
    assert main(["--concept", "../x", "--project", str(tmp_path)]) == 2
    assert "concept name '../x' is invalid" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "data" / "06_models").iterdir()) == ["alice"]


@pytest.mark.slow  # logs and downloads an MLflow model (about a minute on 2 shared cores)
def test_export_from_a_registered_version(tiny_dir, tmp_path, capsys):
    concept = tmp_path / "concept"
    _sd_concept(tiny_dir, concept)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "csim_dlib", 0.7)
    client.log_metric(run.info.run_id, "n_images", 3.0)
    # 32 px: the registration's gallery samples every version with these settings (at the default
    # 512 px the tiny SD's full-resolution attention cost 11 CPU s; nothing here reads a pixel)
    sampling = GenerationConfig(num_inference_steps=2, guidance_scale=5.5, lora_scale_unet=0.8,
                                resolution=32)  # fmt: skip
    register_concept(
        concept, {"path": str(tiny_dir), "tiny": True}, {"csim_dlib": 0.7, "unavailable": {}},
        {"run_id": run.info.run_id, "tracking_uri": uri, "project_path": str(tmp_path)},
        RegistryConfig(model_name="magicapture-alice"), sampling, ServingConfig(),
    )  # fmt: skip
    client.set_terminated(run.info.run_id)
    args = ["--concept", "alice", "--project", str(tmp_path), "--tracking-uri", uri]
    assert main([*args, "--alias", "candidate"]) == 0
    out = tmp_path / "data" / "06_models" / "alice" / "export-candidate"
    magic = _front(out)["magicapture"]
    assert (magic["steps"]["value"], magic["cfg"]["value"]) == (2, 5.5)
    assert magic["lora_strength"]["unet"]["value"] == 0.8
    assert magic["evaluation"]["figures"]["csim_dlib"] == {"value": 0.7, "n": 3}
    assert (out / "loras" / "alice.safetensors").is_file() and (out / "diffusers").is_dir()
    capsys.readouterr()
    assert main([*args, "--alias", "champion"]) == 2
    assert "models:/magicapture-alice@champion: no such version" in capsys.readouterr().err
