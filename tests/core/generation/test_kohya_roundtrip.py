"""The single-file export loaded by diffusers' own loaders (``load_lora_weights`` of the kohya
file, ``load_textual_inversion`` of the web-UI embedding files) into a stock pipeline gives the
pixels of the diffusers-format export, for the tiny SD and the tiny SDXL; refusals name what is
missing; the card carries its front matter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

from magicapture_pipeline.core.generation.bundle import export_bundle
from magicapture_pipeline.core.generation.export import load_concept
from magicapture_pipeline.core.generation.kohya import ExportRefused
from magicapture_pipeline.core.models.builders import build_tiny_model
from tiny_sdxl import TINY_SDXL, write_sdxl_concept
from tiny_sdxl import write_sd_concept as _sd_concept

TEMPLATE = "a photo of a {v1} person in the {v2} style"
# Measured: max |diffusers export - kohya export| over the image, both float32 on CPU. 0 means
# the same weights reach the same modules; the bound leaves room for summation order only.
TOLERANCE = 1e-5


def _image(pipe, prompt: str) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt, num_inference_steps=2, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip


def _kohya_pipe(cls, base, bundle, family):
    pipe = cls.from_pretrained(base, local_files_only=True)
    pipe.load_lora_weights(str(bundle / "loras" / "alice.safetensors"))
    for trigger in ("alice_v1", "alice_v2"):
        file = str(bundle / "embeddings" / f"{trigger}.safetensors")
        if family == "sd15":
            pipe.load_textual_inversion(file, token=trigger)
            continue
        state = load_file(file)  # diffusers' documented recipe for SDXL embedding files
        pipe.load_textual_inversion(
            state["clip_l"], token=trigger, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
        )
        pipe.load_textual_inversion(
            state["clip_g"],
            token=trigger,
            text_encoder=pipe.text_encoder_2,
            tokenizer=pipe.tokenizer_2,
        )
        # What a stock SDXL user must set (README, "The exported concept"): the published
        # text-encoder configs pool at the largest id, i.e. at an added trigger word (issue 18 §3).
        pipe.text_encoder.config.eos_token_id = pipe.tokenizer.eos_token_id
        pipe.text_encoder_2.config.eos_token_id = pipe.tokenizer_2.eos_token_id
        for encoder in (pipe.text_encoder, pipe.text_encoder_2):
            for module in encoder.modules():
                if hasattr(module, "eos_token_id"):
                    module.eos_token_id = encoder.config.eos_token_id
    return pipe  # fmt: skip


def _round_trip(cls, base, concept, bundle, family):
    diffusers_pipe = cls.from_pretrained(base, local_files_only=True)
    load_concept(diffusers_pipe, concept)
    expected = _image(diffusers_pipe, TEMPLATE.format(v1="<v1>", v2="<v2>"))
    plain = _image(cls.from_pretrained(base, local_files_only=True), "a photo of a person")
    got = _image(
        _kohya_pipe(cls, base, bundle, family), TEMPLATE.format(v1="alice_v1", v2="alice_v2")
    )
    assert np.abs(expected - plain).max() > 0.05  # the concept changes the picture
    assert np.abs(got - expected).max() <= TOLERANCE


def test_sd15_kohya_export_gives_the_diffusers_export_pixels(tiny_dir, tmp_path):
    info = _sd_concept(tiny_dir, tmp_path / "concept")
    assert info["text_encoder_lora"]  # both the UNet and the text encoder carry a LoRA
    bundle = tmp_path / "export"
    done = export_bundle(tmp_path / "concept", bundle, "alice", "all")
    keys = load_file(str(bundle / done["lora"]))
    assert any(k.startswith("lora_te_text_model_") for k in keys)
    assert all(keys[k].item() == 4.0 for k in keys if k.endswith(".alpha"))  # rank, scale folded
    assert set(load_file(str(bundle / "embeddings/alice_v1.safetensors"))) == {"emb_params"}
    _round_trip(StableDiffusionPipeline, tiny_dir, tmp_path / "concept", bundle, "sd15")


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("xl") / "tiny_sdxl", TINY_SDXL)


def test_sdxl_kohya_export_gives_the_diffusers_export_pixels(tiny_xl, tmp_path):
    write_sdxl_concept(tiny_xl, tmp_path / "concept")
    bundle = tmp_path / "export"
    done = export_bundle(tmp_path / "concept", bundle, "alice", "kohya")
    keys = load_file(str(bundle / done["lora"]))
    assert {k.split("_")[1] for k in keys} == {"unet", "te1", "te2"}
    embedding = load_file(str(bundle / "embeddings/alice_v2.safetensors"))
    assert {k: tuple(v.shape) for k, v in embedding.items()} == {
        "clip_l": (1, 32), "clip_g": (1, 64)}  # fmt: skip
    assert not (bundle / "diffusers").exists()
    _round_trip(StableDiffusionXLPipeline, tiny_xl, tmp_path / "concept", bundle, "sdxl")


def test_card_front_matter_and_refusals(tiny_dir, tmp_path):
    _sd_concept(tiny_dir, tmp_path / "concept")
    metrics = {"csim_dlib": 0.41, "n_images": 8.0, "unavailable": {"style_similarity": "no CLIP"}}
    export_bundle(tmp_path / "concept", tmp_path / "out", "alice", "all", metrics=metrics)
    text = (tmp_path / "out" / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    magic = front["magicapture"]
    assert front["instance_prompt"] == "a photo of a alice_v1 person in the style of alice_v2"
    assert magic["trigger_words"] == {"<v1>": "alice_v1", "<v2>": "alice_v2"}
    assert magic["lora_strength"]["unet"]["value"] == 0.6
    assert magic["lora_strength"]["text_encoder"]["value"] == 0.9
    assert magic["evaluation"]["figures"]["csim_dlib"] == {"value": 0.41, "n": 8}
    assert (
        "official" in magic["sampler"]["source"] and magic["sampler"]["automatic1111"] == "Euler a"
    )
    assert magic["recipe"]["lora_rank"]["source"].startswith("LoRA rank")
    info = json.loads((tmp_path / "concept" / "concept.json").read_text())
    del info["family"]
    (tmp_path / "concept" / "concept.json").write_text(json.dumps(info))
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    with pytest.raises(ExportRefused, match=r"concept\.json: field 'family' is missing"):
        export_bundle(tmp_path / "concept", tmp_path / "out", "alice", "all")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before  # earlier export kept
    with pytest.raises(ExportRefused, match="format 'ckpt'"):
        export_bundle(tmp_path / "concept", tmp_path / "out2", "alice", "ckpt")
    assert not (tmp_path / "out2").exists()
