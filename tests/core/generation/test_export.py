"""Export a trained concept, load it with stock diffusers, get the in-memory pixels back."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from conftest import PROJECT_ROOT
from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.config.training import LoraConfigModel, StageTwoConfig
from magicapture_pipeline.core.generation.export import (
    CONCEPT_JSON,
    LORA_FILE,
    export,
    load_concept,
    read_concept,
    token_filename,
)
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageTwoTrainer, TrainingExample
from magicapture_pipeline.datasets.concept import ConceptDataset
from magicapture_pipeline.datasets.tensors import SafetensorsDataset

PROMPT = "a photo of a <v1> person in the <v2> style"


def _examples() -> list[TrainingExample]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:6, 2:6] = 1
    return [
        TrainingExample(f"{r}{i}", r, torch.rand(3, 64, 64, generator=generator) * 2 - 1, mask)
        for r in ("source", "reference")
        for i in range(2)
    ]


def _train(tiny_dir, preset: str, alpha: float = 4.0) -> StageTwoTrainer:
    config = StageTwoConfig(
        max_steps=3,
        gradient_accumulation_steps=1,
        mixed_precision="no",
        learning_rate=1e-2,
        heatmap_every=0,
        lora=LoraConfigModel(preset=preset, alpha=alpha),
        identity=IdentityConfig(mode="off"),
        attention=AttentionConfig(resolution=8),
    )
    trainer = StageTwoTrainer(load_components(tiny_dir), _examples(), config)
    trainer.train(progress=False)
    return trainer


def _generate(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPT,
        num_inference_steps=3,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.mark.parametrize(("preset", "alpha"), [("paper", 4.0), ("official", 4.0), ("paper", 8.0)])
def test_stock_diffusers_load_gives_the_in_memory_image(tiny_dir, tmp_path, preset, alpha):
    trainer = _train(tiny_dir, preset, alpha)
    result = trainer.result(str(tiny_dir), 64)
    info = export(tmp_path / "concept", result.embeddings, result.unet_lora,
                  result.text_encoder_lora, result.metadata)  # fmt: skip
    in_memory = StableDiffusionPipeline.from_pretrained(
        tiny_dir, local_files_only=True,
        unet=trainer.unet, text_encoder=trainer.text_encoder, tokenizer=trainer.tokenizer,
    )  # fmt: skip
    expected = _generate(in_memory)

    stock = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    loaded = load_concept(stock, tmp_path / "concept")
    assert loaded == info
    np.testing.assert_allclose(_generate(stock), expected, atol=1e-5)

    without_lora = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    for item in info["tokens"]:
        without_lora.load_textual_inversion(str(tmp_path / "concept" / item["file"]),
                                            token=item["token"])  # fmt: skip
    assert np.abs(_generate(without_lora) - expected).max() > 1e-3  # the LoRA changes the output


def test_concept_json_contract(tiny_dir, tmp_path):
    result = _train(tiny_dir, "paper").result(str(tiny_dir), 64)
    export(tmp_path, result.embeddings, result.unet_lora, None, result.metadata)
    info = json.loads((tmp_path / CONCEPT_JSON).read_text())
    assert info["base_model"] == str(tiny_dir) and info["resolution"] == 64
    assert [t["token"] for t in info["tokens"]] == ["<v1>", "<v2>"]
    assert info["lora"] == LORA_FILE and (tmp_path / LORA_FILE).is_file()
    assert info["preset"] == "paper"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert info["commit"] == head  # the package's commit, not the fallback "unknown"
    assert info["identity_loss"]["enabled"] is False
    assert all((tmp_path / t["file"]).is_file() for t in info["tokens"])
    assert not any(p.suffix in {".bin", ".pt", ".pkl"} for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("index", "token", "name"),
    [(1, "<v1>", "token_1_v1.safetensors"), (2, "<my style>", "token_2_my_style.safetensors"),
     (3, "<>", "token_3_token.safetensors")],
)  # fmt: skip
def test_token_filename(index, token, name):
    assert token_filename(index, token) == name


def test_concept_dataset_round_trip(tiny_dir, tmp_path):
    result = _train(tiny_dir, "paper").result(str(tiny_dir), 64)
    dataset = ConceptDataset(path=str(tmp_path / "concept"))
    assert not dataset.exists()
    dataset.save(result)
    loaded = dataset.load()
    assert loaded["path"] == str(tmp_path / "concept")
    assert loaded == {**read_concept(tmp_path / "concept"), "path": loaded["path"]}


def test_safetensors_dataset_round_trip(tmp_path):
    dataset = SafetensorsDataset(filepath=str(tmp_path / "sub" / "e.safetensors"))
    values = {"<v1>": torch.arange(4.0), "<v2>": -torch.arange(4.0)}
    dataset.save(values)
    loaded = dataset.load()
    assert set(loaded) == set(values) and all(torch.equal(loaded[k], values[k]) for k in values)


def test_lora_scale_zero_is_the_base_unet(tiny_dir, tmp_path):
    result = _train(tiny_dir, "paper").result(str(tiny_dir), 64)
    export(tmp_path, result.embeddings, result.unet_lora, None, result.metadata)
    full = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    load_concept(full, tmp_path)
    off = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    load_concept(off, tmp_path, lora_scale=0.0)
    off_image = _generate(off)
    off.unload_lora_weights()
    np.testing.assert_allclose(off_image, _generate(off), atol=1e-6)
    assert np.abs(_generate(full) - off_image).max() > 1e-3


def test_embeddings_only_concept_loads_without_lora(tiny_dir, tmp_path):
    """Textual Inversion's export: no LoRA file, and stock loading adds only the tokens."""
    embeddings = {"<v1>": torch.randn(32), "<v2>": torch.randn(32)}
    info = export(tmp_path, embeddings, None, None, {"base_model": str(tiny_dir)})
    assert info["lora"] is None and not (tmp_path / LORA_FILE).exists()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    loaded = load_concept(pipe, tmp_path)
    assert [t["token"] for t in loaded["tokens"]] == ["<v1>", "<v2>"]
    row = pipe.tokenizer.convert_tokens_to_ids("<v1>")
    weight = pipe.text_encoder.get_input_embeddings().weight[row]
    assert torch.allclose(weight, embeddings["<v1>"])
    assert not getattr(pipe.unet, "peft_config", None)
