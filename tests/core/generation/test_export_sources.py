"""The export's source choice (``params:export``), the two datasets of the ``export`` pipeline,
and ``compare_exports`` (``make export --verify``) on the tiny SD."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kedro.io import DatasetError
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from magicapture_pipeline.config.export import ExportConfig
from magicapture_pipeline.config.sections import check_sections
from magicapture_pipeline.core.generation.bundle import ExportRequest, local_source
from magicapture_pipeline.core.generation.kohya import ExportRefused
from magicapture_pipeline.core.generation.kohya_check import card_front_matter, compare_exports
from magicapture_pipeline.datasets.concept_export import ConceptExportDataset, ExportSourceDataset
from magicapture_pipeline.export import main
from magicapture_pipeline.serving.export_source import export_request
from tiny_concept import write_test_concept
from tiny_sdxl import write_sd_concept


def test_export_config_names_one_folder_safe_source():
    assert ExportConfig().folder_name() == "export"
    assert ExportConfig(alias="champion").folder_name() == "export-champion"
    assert ExportConfig(model_version=3).folder_name() == "export-v3"
    assert ExportConfig(alias="champion").model_reference("m") == "models:/m@champion"
    assert ExportConfig(model_version=3).model_reference("m") == "models:/m/3"
    for alias in ("../x", "a/b", "", "-x", "a" * 65):
        with pytest.raises(ValidationError, match="alias"):
            ExportConfig(alias=alias)
    for alias in ("v3", "latest"):  # MLflow version references, and export-v3 is version 3's
        with pytest.raises(ValidationError, match="version references"):
            ExportConfig(alias=alias)
    with pytest.raises(ValidationError, match="both set"):
        ExportConfig(alias="champion", model_version=2)
    problems = check_sections({"export": {"alias": "../../etc", "format": "ckpt"}}, ["export"])
    assert len(problems) == 2 and all(p.startswith("params:export.") for p in problems)


def test_cli_refuses_a_path_like_alias_and_writes_nothing(tmp_path, capsys):
    args = ["--concept", "alice", "--project", str(tmp_path), "--alias", "../../../../x"]
    assert main(args) == 2
    assert "alias" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_source_dataset_leaves_out_what_is_missing(tmp_path):
    concept = tmp_path / "concept"
    dataset = ExportSourceDataset(
        str(concept), str(tmp_path / "metrics.json"), str(tmp_path / "grid.png")
    )
    source = dataset.load()  # nothing there: an export of a registered version needs none of it
    assert (source.concept_dir, source.metrics, source.grid) == (concept, None, None)
    with pytest.raises(ExportRefused, match=r"concept: no concept folder with concept\.json"):
        ExportRequest(source, "alice").write(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "metrics.json").write_text(json.dumps({"csim_dlib": 0.5}))
    Image.new("RGB", (4, 4)).save(tmp_path / "grid.png")
    source = dataset.load()
    assert source.metrics == {"csim_dlib": 0.5} and source.grid == tmp_path / "grid.png"
    assert source.sampling is None  # no records: the caller's settings
    # the generate step's records: the card recommends what drew the grid
    (tmp_path / "records.csv").write_text(
        "key,seed,scheduler,num_inference_steps,guidance_scale,lora_scale_unet,resolution,"
        "negative_prompt\np00_s000,4,ddim,3,5.5,0.7,96,\n"
    )
    dataset = ExportSourceDataset(
        str(concept), str(tmp_path / "metrics.json"), str(tmp_path / "grid.png"),
        str(tmp_path / "records.csv"),
    )  # fmt: skip
    sampling = dataset.load().sampling
    assert (sampling.scheduler, sampling.num_inference_steps, sampling.guidance_scale) == (
        "ddim", 3, 5.5)  # fmt: skip
    assert (sampling.lora_scale_unet, sampling.resolution, sampling.seed) == (0.7, 96, 0)
    assert "drawn with the sampling settings above" in dataset.load().grid_origin
    with pytest.raises(DatasetError, match="read only"):
        dataset.save(source)


def test_export_dataset_writes_the_folder_make_export_writes(tiny_dir, tmp_path):
    write_test_concept(tiny_dir, tmp_path / "concept")
    Image.new("RGB", (6, 3), (1, 2, 3)).save(tmp_path / "grid.png")
    source = local_source(tmp_path / "concept", grid_file=tmp_path / "grid.png")
    dataset = ConceptExportDataset(str(tmp_path / "alice" / "export"))
    request = export_request("alice", ExportConfig(format="kohya"), source, "m", None)
    dataset.save(request)
    out = tmp_path / "alice" / "export"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "embeddings", "loras", "sample_grid.png"]  # fmt: skip
    front = dataset.load()
    assert front["path"] == str(out)
    assert front["magicapture"]["source"] == f"concept folder {tmp_path / 'concept'}"
    assert front["magicapture"]["sample_grid"]["file"] == "sample_grid.png"
    assert "generate step's contact sheet" in front["magicapture"]["sample_grid"]["origin"]
    # a registered version's request goes beside it, as make export writes it
    request.folder = ExportConfig(alias="champion").folder_name()
    assert dataset.target(request) == tmp_path / "alice" / "export-champion"
    request.folder = "../../elsewhere"
    with pytest.raises(DatasetError, match="expected export-<alias"):
        dataset.save(request)
    with pytest.raises(DatasetError, match="expected an ExportRequest"):
        dataset.save({"not": "a request"})


def test_compare_exports_measures_the_kohya_files_against_the_diffusers_folder(tiny_dir, tmp_path):
    write_sd_concept(tiny_dir, tmp_path / "concept")
    source = local_source(tmp_path / "concept")
    out = tmp_path / "export"
    ExportRequest(source, "alice").write(out)
    report = compare_exports(out)
    assert report["prompt"] == "a photo of a alice_v1 person in the style of alice_v2"
    assert report["concept_effect"] > 0.05  # the concept changes the picture
    assert report["max_abs_pixel_difference"] <= 1e-5  # the same weights reach the same modules
    # a LoRA whose strength does not read as trained is seen (alpha = 2 x rank: scale 2)
    lora = out / "loras" / "alice.safetensors"
    state = load_file(str(lora))
    save_file({k: v * 2 if k.endswith(".alpha") else v for k, v in state.items()}, str(lora))
    assert compare_exports(out)["max_abs_pixel_difference"] > 1e-3
    assert card_front_matter(out)["magicapture"]["files"]["embeddings"][0] == str(
        Path("embeddings") / "alice_v1.safetensors"
    )
    ExportRequest(source, "alice", "kohya").write(tmp_path / "kohya_only")
    with pytest.raises(ExportRefused, match="format 'all'"):
        compare_exports(tmp_path / "kohya_only")


def test_card_figures_carry_their_own_n_and_se():
    from magicapture_pipeline.core.generation.model_card import evaluation_figures

    metrics = {
        "csim_dlib": 0.41, "csim_dlib_n": 3.0, "csim_dlib_se": 0.05, "csim_dlib_faces": 3.0,
        "face_detected_rate": 0.75, "n_images": 4.0, "postprocessed_csim_dlib": 0.4,
        "postprocessed_n_images": 2.0, "heldout_photos": 1.0, "identity_loss_trained": 0.0,
        "info": {"n_sources": 4}, "unavailable": {"style_similarity": "no CLIP"},
    }  # fmt: skip
    got = evaluation_figures(metrics)
    assert got["figures"] == {
        "csim_dlib": {"value": 0.41, "n": 3, "se": 0.05},  # over the faces found, not the images
        "face_detected_rate": {"value": 0.75, "n": 4},
        "postprocessed_csim_dlib": {"value": 0.4, "n": 2},
    }
    assert got["run"] == {"heldout_photos": 1.0, "identity_loss_trained": 0.0}
    assert got["unavailable"] == {"style_similarity": "no CLIP"}
