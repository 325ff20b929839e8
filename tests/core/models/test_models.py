"""The offline tokenizer and the tiny SD load through the same from_pretrained path as SD 1.5."""

from __future__ import annotations

import pytest
import torch

from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.core.models.builders import build_tiny_autoencoder, build_tiny_sd
from magicapture_pipeline.core.models.loading import (
    check_decoder_matches,
    is_local_model,
    load_components,
    load_tiny_autoencoder,
    token_ids,
    upsampling_factor,
)
from magicapture_pipeline.core.models.offline_tokenizer import (
    DEFAULT_WORDS,
    build_offline_tokenizer,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("a photo of a person", ["a</w>", "photo</w>", "of</w>", "a</w>", "person</w>"]),
        ("painting in the style", ["painting</w>", "in</w>", "the</w>", "style</w>"]),
        ("xyz", ["x", "y", "z</w>"]),  # unknown words fall back to bytes
    ],
)
def test_offline_tokenizer_tokens(text, tokens):
    assert build_offline_tokenizer().tokenize(text) == tokens


def test_offline_tokenizer_specials_and_extra_words():
    tok = build_offline_tokenizer(extra_words=["sunflower"])
    ids = tok("sunflower").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 3
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.model_max_length == 77
    assert set(DEFAULT_WORDS) <= {t.removesuffix("</w>") for t in tok.get_vocab()}


def test_offline_tokenizer_rejects_non_letters():
    with pytest.raises(ValueError, match="ASCII letters"):
        build_offline_tokenizer(extra_words=["v1"])


def test_tiny_sd_loads_through_from_pretrained(tiny_dir):
    assert is_local_model(tiny_dir)
    comp = load_components(tiny_dir)
    assert comp.source == str(tiny_dir)
    assert comp.tokenizer.tokenize("a photo of a person")[1] == "photo</w>"
    assert comp.text_encoder.config.hidden_size == comp.unet.config.cross_attention_dim == 32
    assert type(comp.noise_scheduler).__name__ == "DDPMScheduler"
    assert comp.noise_scheduler.config.beta_schedule == "scaled_linear"
    latents = comp.vae.encode(torch.zeros(1, 3, 128, 128)).latent_dist.mean
    assert latents.shape == (1, 4, 16, 16)  # x8 like SD
    ids = token_ids(comp.tokenizer, ["a photo"])
    hidden = comp.text_encoder(ids)[0]
    out = comp.unet(latents, torch.tensor([10]), hidden).sample
    assert out.shape == latents.shape
    assert not any(p.requires_grad for p in comp.unet.parameters())


def test_tiny_sd_is_seeded(tmp_path, tiny_dir):
    again = load_components(build_tiny_sd(tmp_path / "again", TinyModelConfig()))
    first = load_components(tiny_dir)
    for a, b in zip(first.unet.parameters(), again.unet.parameters(), strict=True):
        assert torch.equal(a, b)


def test_stock_pipeline_runs_the_tiny_model(tiny_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a photo of a person", num_inference_steps=2, height=64, width=64, output_type="np"
    ).images
    assert image.shape == (1, 64, 64, 3)


def test_every_word_is_one_token():
    extra = ["sunflower", "wonderful", "personality"]
    tok = build_offline_tokenizer(extra_words=extra)
    for word in (*DEFAULT_WORDS, *extra):
        assert tok.tokenize(word) == [f"{word}</w>"], word


def test_taesd_stand_in_loads_through_from_pretrained(tmp_path, tiny_dir):
    built = build_tiny_autoencoder(seed=3)
    built.save_pretrained(tmp_path / "taesd", safe_serialization=True)
    loaded = load_tiny_autoencoder(tmp_path / "taesd")
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    for (name, a), (_, b) in zip(built.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    vae = load_components(tiny_dir).vae
    check_decoder_matches(loaded, vae)  # TAESD's x8, 4 channels fit the tiny SD's VAE
    latents = torch.randn(1, 4, 6, 5)
    image = loaded.decode(latents).sample
    assert image.shape == (1, 3, 48, 40) and bool(torch.isfinite(image).all())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"decoder_block_out_channels": (64, 64, 64)}, "x4"),
        ({"latent_channels": 8}, "8-channel"),
    ],
)
def test_taesd_that_cannot_decode_the_model_is_refused(tiny_dir, config, message):
    from diffusers import AutoencoderTiny

    levels = len(config.get("decoder_block_out_channels", (64,) * 4))
    other = AutoencoderTiny(num_decoder_blocks=(3,) * (levels - 1) + (1,), **config)
    assert upsampling_factor(other) == 2 ** (levels - 1)
    with pytest.raises(ValueError, match=message):
        check_decoder_matches(other, load_components(tiny_dir).vae)


def test_missing_taesd_names_the_source_and_the_ways_out(tmp_path):
    with pytest.raises(OSError, match=r"(?s)nowhere.*identity.decoder: vae"):
        load_tiny_autoencoder(tmp_path / "nowhere")
