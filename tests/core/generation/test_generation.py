"""Composed prompts, concept loading through diffusers' stock loaders, seeded sampling, grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.core.generation import sampling as g
from tiny_concept import write_test_concept


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_sd) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_sd(sample_size=64)
    return base, write_test_concept(base, root / "concept")


@pytest.mark.parametrize(
    ("templates", "expected"),
    [
        (
            ["a photo of a {v1} person in the {v2} style"],
            ["a photo of a <a> person in the <b> style"],
        ),
        (["{v1} in {v2}", "{v1} in {v2}", "plain"], ["<a> in <b>", "plain"]),
    ],
)
def test_compose_prompts(templates, expected):
    assert g.compose_prompts(templates, "<a>", "<b>") == expected


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([{"token": "<p>"}, {"token": "<s>"}], ("<p>", "<s>")),
        ([{"token": "<s>", "role": "style"}, {"token": "<p>", "role": "person"}], ("<p>", "<s>")),
    ],
)
def test_concept_tokens(tokens, expected):
    assert g.concept_tokens({"tokens": tokens}) == expected


def test_concept_needs_two_tokens():
    with pytest.raises(ValueError, match="V1"):
        g.concept_tokens({"tokens": [{"token": "<p>"}]})


def test_attach_concept_uses_stock_loaders(tiny):
    base, concept = tiny
    pipe = g.load_base_pipeline(base)
    g.attach_concept(pipe, concept, lora_scale_unet=0.6)
    assert pipe.get_list_adapters()["unet"] == [g.CONCEPT_ADAPTER]
    ids = pipe.tokenizer("<v1> <v2>", add_special_tokens=False).input_ids
    assert len(ids) == 2 and all(i >= pipe.tokenizer.vocab_size for i in ids)
    table = pipe.text_encoder.get_input_embeddings().weight
    from safetensors.torch import load_file

    assert torch.allclose(table[ids[0]], load_file(str(concept / "v1.safetensors"))["<v1>"][0])


def test_run_generation_is_seeded_and_recorded(tiny):
    base, concept = tiny
    config = GenerationConfig(
        images_per_prompt=2,
        num_inference_steps=3,
        resolution=64,
        seed=5,
        extra_prompts=["a portrait of {v1}"],
    )
    first = g.run_generation(base, concept, config)
    assert [i.key for i in first.images] == ["p00_s000", "p00_s001", "p01_s000", "p01_s001"]
    assert [i.seed for i in first.images] == [5, 6, 7, 8]
    assert first.images[2].prompt == "a portrait of <v1>"
    assert first.images[0].image.size == (64, 64)
    assert first.settings["scheduler"] == "euler_ancestral"
    assert first.settings["lora_scale_unet"] == 0.6
    again = g.run_generation(base, concept, config.model_copy(update={"images_per_prompt": 1}))
    a = np.asarray(first.images[0].image)
    assert np.array_equal(a, np.asarray(again.images[0].image))  # same seed, same image
    assert not np.array_equal(a, np.asarray(first.images[1].image))


def test_make_grid_layout():
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    grid = g.make_grid(images, ["a", "b", "c"], columns=2, label_height=10)
    assert grid.size == (64, 84)
    assert grid.getpixel((40, 5)) == (0, 128, 0)
    with pytest.raises(ValueError):
        g.make_grid(images, ["a"])
