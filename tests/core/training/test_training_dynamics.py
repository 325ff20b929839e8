"""Training dynamics the labels promise (issue 18 §1): the LoRA initialisation of each recipe, no
gradient clipping in the authors' stage one, and the two-pass Eq. 7 as the authors run it (the
step's own noise, no attention maps stored by its second UNet pass).

Each test was seen failing once with the code broken on purpose; the break is in its docstring.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from conftest import make_examples, random_identity
from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageOneTrainer, StageTwoTrainer

EMBEDDINGS = {"<v1>": torch.full((32,), 0.1), "<v2>": torch.full((32,), -0.1)}


def _stage_two(tiny_dir, **values) -> StageTwoTrainer:
    values = {
        "max_steps": 2,
        "gradient_accumulation_steps": 1,
        "mixed_precision": "no",
        "heatmap_every": 0,
        "attention": AttentionConfig(resolution=8),
        "identity": IdentityConfig(mode="off"),
        **values,
    }
    return StageTwoTrainer(
        load_components(tiny_dir), make_examples(), StageTwoConfig(**values), EMBEDDINGS
    )


def _lora_a(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach() for n, p in model.named_parameters() if "lora_A" in n]


# ------------------------------------------------------------------------- LoRA initialisation
@pytest.mark.parametrize("recipe", ["paper", "official"])
@pytest.mark.parametrize("rank", [4, 8])
def test_lora_a_starts_as_the_authors_gaussian_in_both_recipes(tiny_dir, recipe, rank):
    """A ~ N(0, (1/rank)^2): std 0.25 at rank 4, 0.125 at rank 8 (authors' LoraInjectedLinear),
    B zero (break tried: the old default ``init: default``, peft's kaiming-uniform A, std
    1/sqrt(3 fan_in) = 0.10 at the tiny UNet's width 32: both recipes failed)."""
    trainer = _stage_two(tiny_dir, recipe=recipe, lora={"rank": rank, "alpha": rank})
    assert trainer.config.lora.init == "gaussian"
    values = torch.cat([a.flatten() for a in _lora_a(trainer.unet)])
    assert values.numel() > 500
    assert float(values.std()) == pytest.approx(1 / rank, rel=0.08)
    assert float(values.mean()) == pytest.approx(0.0, abs=0.03 / rank * 4)
    for name, param in trainer.unet.named_parameters():
        if "lora_B" in name:
            assert not param.any(), name  # the output starts unchanged
    if recipe == "official":  # the text encoder's LoRA too
        text = torch.cat([a.flatten() for a in _lora_a(trainer.text_encoder)])
        assert float(text.std()) == pytest.approx(1 / rank, rel=0.08)


def test_lora_init_default_is_peft_kaiming(tiny_dir):
    """``init: default`` keeps peft's kaiming-uniform A: each module's std is 1/sqrt(3 fan_in)."""
    trainer = _stage_two(tiny_dir, lora={"init": "default"})
    for a in _lora_a(trainer.unet):
        fan_in = a.shape[1]
        assert float(a.std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.15)
        assert float(a.abs().max()) <= 1 / math.sqrt(fan_in) + 1e-6  # uniform's bound


# ----------------------------------------------------------------------------- clipping
def test_official_stage_one_does_not_clip_and_stage_two_clips_at_one():
    """The authors clip only in stage two (break tried: ``authors(stage_two=1.0)`` without the
    stage-one entry: official stage one came out at 1.0)."""
    assert StageOneConfig(recipe="official").max_grad_norm is None
    assert StageTwoConfig(recipe="official").max_grad_norm == 1.0
    assert StageOneConfig().max_grad_norm == 1.0  # paper recipe: ours, both stages
    assert StageOneConfig(max_grad_norm=0).max_grad_norm == 0
    with pytest.raises(ValidationError, match="max_grad_norm"):
        StageOneConfig(max_grad_norm=-1.0)


@pytest.mark.parametrize(("norm", "clips"), [(None, 0), (0.0, 0), (0.5, 2)])
def test_stage_one_clips_only_when_a_norm_is_set(tiny_dir, monkeypatch, norm, clips):
    """0 and null train without clipping, a positive norm clips every step (break tried:
    ``if self.config.max_grad_norm is not None``: 0 clipped to zero norm, 2 calls)."""
    trainer = StageOneTrainer(
        load_components(tiny_dir),
        make_examples(),
        StageOneConfig(
            max_steps=2, gradient_accumulation_steps=1, mixed_precision="no", max_grad_norm=norm
        ),
    )
    seen = []
    real = trainer.accelerator.clip_grad_norm_

    def counting(params, max_norm, *args, **kwargs):
        seen.append(max_norm)
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(trainer.accelerator, "clip_grad_norm_", counting)
    before = trainer.placeholder_embeddings()["<v1>"].clone()
    trainer.train(progress=False)
    assert len(seen) == clips and all(value == norm for value in seen)
    assert not torch.equal(trainer.placeholder_embeddings()["<v1>"], before)  # it trained


# ------------------------------------------------------------------------ two-pass Eq. 7
def _two_pass(tiny_dir) -> StageTwoTrainer:
    return _stage_two(
        tiny_dir,
        task_weights=[0, 0, 1],
        identity=random_identity(mode="two_pass", threshold_fraction=0.5),
    )


def test_two_pass_identity_reuses_the_steps_noise(tiny_dir, monkeypatch):
    """The second forward noises the same latents with the step's noise at its own t < T'
    (authors' loss_step: ``add_noise(latents, noise, id_timesteps)``; break tried: the old fresh
    draw, ``self._noisy(latents, t)``: the noises differed)."""
    trainer = _two_pass(tiny_dir)
    calls = []
    real = trainer._noisy

    def recording(latents, timestep=None, noise=None):
        out = real(latents, timestep, noise=noise)
        calls.append((latents, out))
        return out

    monkeypatch.setattr(trainer, "_noisy", recording)
    _, terms, task = trainer._micro_step()
    assert task == "composed" and terms["id_active"] == 1.0
    assert len(calls) == 2
    (latents_1, (_, noise_1, _)), (latents_2, (noisy_2, noise_2, t_2)) = calls
    assert latents_2 is latents_1 and torch.equal(noise_2, noise_1)
    assert int(t_2) < trainer.identity_term.timestep_limit
    expected = trainer.noise_scheduler.add_noise(latents_1, noise_1, t_2)
    assert torch.equal(noisy_2, expected)


def test_two_pass_second_forward_stores_no_attention_maps(tiny_dir, monkeypatch):
    """Only the training forward's maps are stored (Eq. 8 reads those); the identity pass runs
    SDPA (break tried: the second ``_predict`` outside ``_capture_paused``: twice the stores)."""
    trainer = _two_pass(tiny_dir)
    capture = trainer.attention_term.capture
    stores = []
    real = capture._store

    def counting(name, probs):
        stores.append(name)
        real(name, probs)

    monkeypatch.setattr(capture, "_store", counting)
    _, terms, _ = trainer._micro_step()
    assert terms["id_active"] == 1.0 and terms["loss_attn"] > 0
    layers = len(capture.layer_names)
    assert layers >= 1 and len(stores) == layers
    assert capture.num_captured == layers and capture.enabled  # restored after the pass


def test_eq8_layers_are_read_at_the_training_latent_size(tiny_sd):
    """A UNet laid out for 128 px (latent 16) trained at 64 px (latent 8): ``resolution: 8`` picks
    the layers that run at 8 x 8 on the training latents, not those at 8 x 8 for the config's
    sample_size (break tried: no ``latent_size`` passed to the capture: the second level's layers
    were picked, and their maps were 4 x 4)."""
    from magicapture_pipeline.core.models.attention import cross_attention_layers

    trainer = StageTwoTrainer(
        load_components(tiny_sd(128)),
        make_examples(64),
        StageTwoConfig(
            max_steps=1, gradient_accumulation_steps=1, mixed_precision="no", heatmap_every=0,
            attention=AttentionConfig(resolution=8), identity=IdentityConfig(mode="off"),
        ),  # fmt: skip
        EMBEDDINGS,
    )
    assert trainer.latent_size == 8
    wanted = cross_attention_layers(trainer.unet, 8, latent_size=8)
    assert wanted and trainer.attention_layers == wanted
    assert set(wanted).isdisjoint(cross_attention_layers(trainer.unet, 8, latent_size=16))
    cond = trainer._encode_prompt("a photo of a <v1> person")
    trainer._predict(torch.zeros(1, 4, 8, 8), torch.tensor([10]), cond)
    assert trainer.attention_term.capture.token_maps([5]).shape[-2:] == (8, 8)
