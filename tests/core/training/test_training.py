"""The two training stages on a tiny random SD and hand-made crops/masks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import LANDMARKS, RES, make_examples, random_identity
from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.config.training import LoraConfigModel, StageOneConfig, StageTwoConfig
from magicapture_pipeline.core.identity.arcface import face_latent_window
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.models.tokens import embedding_matrix
from magicapture_pipeline.core.training import (
    StageOneTrainer,
    StageTwoTrainer,
    examples_from_training_set,
    identity_status,
    last_checkpoint,
    lora_module_names,
    lora_targets,
)


def stage_one_config(**overrides) -> StageOneConfig:
    values = {"max_steps": 3, "gradient_accumulation_steps": 2, "mixed_precision": "no"}
    return StageOneConfig(**{**values, **overrides})


def stage_two_config(**overrides) -> StageTwoConfig:
    values = {
        "max_steps": 3,
        "gradient_accumulation_steps": 2,
        "mixed_precision": "no",
        "heatmap_every": 0,
        "attention": AttentionConfig(resolution=8),
    }
    return StageTwoConfig(**{**values, **overrides})


def test_stage_one_changes_only_placeholder_rows(tiny_dir):
    components = load_components(tiny_dir)
    unet_before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    trainer = StageOneTrainer(components, make_examples(), stage_one_config())
    te_before = {k: v.clone() for k, v in trainer.text_encoder.state_dict().items()}
    rows = trainer.train(progress=False)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["lr_embedding"] == 5e-4 for r in rows)
    weight = embedding_matrix(trainer.text_encoder).detach()
    key = next(k for k in te_before if k.endswith("token_embedding.weight"))
    changed = (weight != te_before[key]).any(dim=1).nonzero().flatten().tolist()
    assert changed == trainer.token_ids
    for name, value in trainer.text_encoder.state_dict().items():
        if name != key:
            assert torch.equal(value, te_before[name]), name
    for name, value in components.unet.state_dict().items():
        assert torch.equal(value, unet_before[name]), name
    result = trainer.result()
    assert list(result.embeddings) == ["<v1>", "<v2>"]


def test_stage_two_moves_only_the_placeholder_rows_of_the_embedding(tiny_dir):
    """FINDINGS: stage two's placeholder-only update had no before/after comparison."""
    trainer = _trainer("two", tiny_dir, identity=IdentityConfig(mode="off"))
    before = embedding_matrix(trainer.text_encoder).detach().clone()
    trainer.train(progress=False)
    after = embedding_matrix(trainer.text_encoder).detach()
    assert (after != before).any(dim=1).nonzero().flatten().tolist() == sorted(trainer.token_ids)


@pytest.mark.parametrize(
    ("preset", "unet_kinds", "text_encoder_modules"),
    [
        ("paper", {"attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"}, 0),
        (
            "official",
            {
                "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                "ff.net.0.proj",
            },
            2 * 4,  # two text-encoder layers x q/k/v/out
        ),
        ("custom_diffusion", {"attn2.to_k", "attn2.to_v"}, 0),
    ],
)  # fmt: skip
def test_lora_targets_match_the_preset(tiny_dir, preset, unet_kinds, text_encoder_modules):
    trainer = StageTwoTrainer(
        load_components(tiny_dir),
        make_examples(),
        stage_two_config(lora=LoraConfigModel(preset=preset)),
    )
    names = lora_module_names(trainer.unet)
    assert {k for k in unet_kinds if any(n.endswith(k) for n in names)} == unet_kinds
    assert all(any(n.endswith(k) for k in unet_kinds) for n in names)
    assert len(lora_module_names(trainer.text_encoder)) == text_encoder_modules
    assert (lora_targets(preset)[1] is None) is (text_encoder_modules == 0)
    result = trainer.result()
    assert result.metadata["preset"] == preset
    assert bool(result.text_encoder_lora) is (text_encoder_modules > 0)


def _trainer(kind, tiny_dir, **overrides):
    components = load_components(tiny_dir)
    if kind == "one":
        return StageOneTrainer(components, make_examples(), stage_one_config(**overrides))
    overrides.setdefault("identity", random_identity())
    return StageTwoTrainer(
        components,
        make_examples(),
        stage_two_config(**overrides),
        {"<v1>": torch.full((32,), 0.1), "<v2>": torch.full((32,), -0.1)},
    )


@pytest.mark.parametrize("kind", ["one", "two"])  # two: about 4 s CPU with Eq. 7 in fp32
def test_resume_equals_uninterrupted(tiny_dir, tmp_path, kind):
    settings = {"max_steps": 4, "lr_scheduler": "linear", "lr_warmup_steps": 1}
    straight = _trainer(kind, tiny_dir, **settings)
    straight.train(progress=False)

    folder = tmp_path / "checkpoints"
    first = _trainer(kind, tiny_dir, checkpoint_every=2, checkpoint_dir=str(folder), **settings)
    first.train(progress=False, until=3)  # "crash" after step 3; last checkpoint is step 2
    assert last_checkpoint(folder).name == "checkpoint-2"
    resumed = _trainer(
        kind, tiny_dir, checkpoint_every=2, checkpoint_dir=str(folder), resume=True, **settings
    )
    resumed.train(progress=False)

    assert resumed.global_step == 4
    expected, got = straight._trainable(), resumed._trainable()
    assert set(expected) == set(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert resumed.history == straight.history
    assert torch.equal(
        embedding_matrix(straight.text_encoder), embedding_matrix(resumed.text_encoder)
    )
    assert not torch.equal(first._trainable()["placeholder_rows"], got["placeholder_rows"])


def test_identity_off_without_checkpoint_is_loud_and_recorded(tiny_dir, caplog):
    with caplog.at_level(logging.WARNING):
        trainer = _trainer("two", tiny_dir, identity=IdentityConfig())
    assert "IDENTITY LOSS (Eq. 7) IS OFF" in caplog.text
    trainer.train(progress=False)
    assert all(row["loss_id"] == 0.0 for row in trainer.history)
    status = trainer.result().metadata["identity_loss"]
    assert status["enabled"] is False and "checkpoint" in status["reason"]


@pytest.mark.parametrize(
    ("identity", "enabled"),
    [
        ({"mode": "off", "random_init": True}, False),
        ({"checkpoint": "/no/such/file.pth"}, False),
        ({"random_init": True}, True),
    ],
)
def test_identity_status(identity, enabled):
    assert identity_status(IdentityConfig(**identity))["enabled"] is enabled


def test_tiny_autoencoder_without_a_source_needs_random_init():
    with pytest.raises(ValueError, match="identity.tiny_autoencoder"):
        IdentityConfig(decoder="tiny_autoencoder", tiny_autoencoder=None)
    status = identity_status(
        IdentityConfig(decoder="tiny_autoencoder", tiny_autoencoder=None, random_init=True)
    )
    assert status["decoder"] == "tiny_autoencoder: random TAESD (tests only)"


@pytest.mark.parametrize(("mode", "autocast"), [("single_pass", "bf16"), ("two_pass", "fp32")])
def test_identity_loss_reaches_lora(tiny_dir, mode, autocast, monkeypatch):
    """Both modes; single_pass with the defaults' bf16 identity branch (the other tests run it in
    fp32, see ``conftest.random_identity``), forced on as on a CPU with native bf16. One
    micro-batch per step: emulated bf16 makes each Eq. 7 pass cost seconds on this CPU, and
    accumulation is ``test_training_fidelity``'s subject, not this one's."""
    from magicapture_pipeline.core.training import identity_term

    monkeypatch.setattr(identity_term, "cpu_has_native_bf16", lambda: True)
    identity = random_identity(mode=mode, autocast_dtype=autocast)
    trainer = _trainer(
        "two", tiny_dir, identity=identity, task_weights=[0, 0, 1], gradient_accumulation_steps=1,
        attention=AttentionConfig(enabled=False, resolution=8),
    )  # fmt: skip
    row = trainer.step()
    assert row["task"] == "composed" and row["id_active"] == 1.0 and row["loss_id"] > 0


@pytest.mark.parametrize(("enabled", "positive"), [(True, True), (False, False)])
def test_attention_refocusing_switch(tiny_dir, enabled, positive):
    trainer = _trainer(
        "two", tiny_dir, identity=IdentityConfig(mode="off"),
        attention=AttentionConfig(enabled=enabled, resolution=8),
    )  # fmt: skip
    row = trainer.step()
    assert (row["loss_attn"] > 0) is positive


def test_heatmaps_and_attention_report(tiny_dir):
    trainer = _trainer("two", tiny_dir, identity=IdentityConfig(mode="off"), heatmap_every=2)
    trainer.train(progress=False)
    result = trainer.result()
    assert list(result.heatmaps) == ["step_000002"]
    assert result.heatmaps["step_000002"].mode == "RGB"
    assert 0.0 <= result.history[1]["v1_mass_in_face"] <= 1.0
    report = trainer.attention_report()
    assert report["maps"].shape[1] == 2


def test_cache_latents_off_matches_on(tiny_dir):
    """Cached latents are each variant's own VAE posterior (flipped variants included), and a
    step reads the same latents with the cache on or off: the same seed gives the same loss
    (break caught: the flipped variant caching the unflipped image's latents)."""
    off = _trainer("one", tiny_dir, cache_latents=False, hflip=True)
    on = _trainer("one", tiny_dir, cache_latents=True, hflip=True)
    variants_off = [v for items in off.variants.values() for i in items for v in i]
    variants_on = [v for items in on.variants.values() for i in items for v in i]
    assert all(v.latent_mean is None for v in variants_off)
    for variant in variants_on:
        mean, std = on._encode(variant.example.image)
        assert torch.equal(variant.latent_mean, mean) and torch.equal(variant.latent_std, std)
    losses_off = [off.step()["loss"] for _ in range(3)]
    losses_on = [on.step()["loss"] for _ in range(3)]
    assert losses_on == pytest.approx(losses_off, rel=1e-5, abs=1e-7)


def test_flip_mirrors_landmarks_and_swaps_sides():
    example = make_examples()[0]
    flipped = example.flipped()
    assert torch.equal(flipped.image, example.image.flip(-1))
    left_eye, right_eye = flipped.landmarks5[0], flipped.landmarks5[1]
    assert left_eye[0] < right_eye[0]
    assert torch.isclose(left_eye[0], torch.tensor(RES - 1 - LANDMARKS[1][0]))


def test_examples_from_training_set_reads_the_catalog_contract():
    crop = Image.fromarray(np.full((RES, RES, 3), 255, dtype=np.uint8))
    latent = Image.fromarray(np.full((8, 8), 255, dtype=np.uint8), mode="L")
    image_mask = Image.fromarray(np.zeros((RES, RES), dtype=np.uint8), mode="L")
    training_set = {
        "resolution": RES,
        "items": [
            {"id": "a", "role": "source", "landmarks5": str(LANDMARKS).replace("'", '"')},
            {"id": "b", "role": "reference", "landmarks5": None},
        ],
    }
    crops = {"source/a": lambda: crop, "reference/b": crop}
    masks = {"latent/source/a": lambda: latent, "image/reference/b": image_mask}
    a, b = examples_from_training_set(training_set, crops, masks)
    assert a.image.shape == (3, RES, RES) and float(a.image.max()) == 1.0
    assert a.face_mask.shape == (1, 8, 8) and float(a.face_mask.min()) == 1.0
    assert b.face_mask.shape == (1, 8, 8) and float(b.face_mask.max()) == 0.0
    assert a.landmarks5.shape == (5, 2) and b.landmarks5 is None
    with pytest.raises(ValueError, match="no accepted items"):
        examples_from_training_set({"items": []}, crops, masks)


def test_only_the_placeholder_rows_are_optimised(tiny_dir):
    for kind in ("one", "two"):
        trainer = _trainer(kind, tiny_dir)
        groups = {g["name"]: g["params"] for g in trainer.optimizer.param_groups}
        (rows,) = groups["embedding"]
        assert rows.shape == (len(trainer.token_ids), 32)
        assert not embedding_matrix(trainer.text_encoder).requires_grad
        trainer.step()
        assert torch.equal(embedding_matrix(trainer.text_encoder).detach()[trainer.token_ids], rows)


def _window_trainer(tiny_dir, **identity):
    """Stage two at 256 px with a 64 px face off the corners (a strict, shifted latent window)."""
    examples = make_examples(res=256)
    for example in examples:
        example.landmarks5 = torch.tensor(LANDMARKS) + torch.tensor([150.0, 120.0])
    settings = {"random_init": True, "arch": "r18", "threshold_fraction": 1.0, **identity}
    return StageTwoTrainer(
        load_components(tiny_dir),
        examples,
        stage_two_config(
            identity=IdentityConfig(**settings), task_weights=[0, 0, 1], hflip=False,
            attention=AttentionConfig(enabled=False, resolution=8),
        ),
    )  # fmt: skip


def _identity_inputs(trainer):
    example = trainer.variants["reference"][0][0].example
    latents = trainer._latents(trainer.variants["reference"][0][0])
    noisy, _, timesteps = trainer._noisy(latents, 300)
    cond = trainer._encode_prompt("a photo of a <v1> person in the <v2> style")
    return noisy, timesteps, cond, example


@pytest.mark.parametrize(
    "decoder", ["vae", pytest.param("tiny_autoencoder", marks=pytest.mark.slow)]
)
def test_face_window_identity_gradient_reaches_the_unet(tiny_dir, decoder):
    # the speed option face_window with the default autocast_dtype (bf16 where the CPU has it
    # natively, else fp32: identity_term.cpu_has_native_bf16); the TAESD stand-in is random
    trainer = _window_trainer(
        tiny_dir, decoder=decoder, tiny_autoencoder=None, decode_region="face_window"
    )
    assert trainer.config.identity.decode_region == "face_window"
    assert (trainer.identity_term.decoder is None) == (decoder == "vae")
    decoded: dict[str, list] = {"vae": [], "tiny_autoencoder": []}
    for name, module in (("vae", trainer.vae), ("tiny_autoencoder", trainer.identity_term.decoder)):
        if module is not None:
            module.decode = lambda z, *a, _n=name, _f=module.decode, **k: (
                decoded[_n].append(z.shape) or _f(z, *a, **k)
            )
    noisy, timesteps, cond, example = _identity_inputs(trainer)
    pred = trainer._predict(noisy, timesteps, cond)
    loss = trainer.identity_term(noisy, pred, timesteps, example.landmarks5)[0]
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert len(decoded[decoder]) == 1 and sum(map(len, decoded.values())) == 1  # only that one
    assert max(decoded[decoder][0][-2:]) < 32 == noisy.shape[-1]  # only a window decoded
    grads = [p.grad for n, p in trainer.unet.named_parameters() if "lora" in n]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_face_window_shifts_the_landmarks_into_the_window(tiny_dir):
    """With a local "decoder" (nearest x8 upsampling) the window's aligned face is the full
    image's, so the loss must not change when only the window is decoded."""
    trainer = _window_trainer(tiny_dir, autocast_dtype="none", decode_region="face_window")
    sizes = []

    def local_decode(z, *args, **kwargs):
        sizes.append(tuple(z.shape[-2:]))
        upsampled = torch.nn.functional.interpolate(z[:, :3], scale_factor=8, mode="nearest")
        return type("Decoded", (), {"sample": torch.tanh(upsampled)})()

    trainer.vae.decode = local_decode
    noisy, timesteps, cond, example = _identity_inputs(trainer)
    with torch.no_grad():
        pred = trainer._predict(noisy, timesteps, cond)
        window = trainer.identity_term(noisy, pred, timesteps, example.landmarks5)[0]
        trainer.config.identity.decode_region = "full"
        full = trainer.identity_term(noisy, pred, timesteps, example.landmarks5)[0]
    assert max(sizes[0]) < 32 and sizes[1] == (32, 32)
    top, _, left, _ = face_latent_window(
        example.landmarks5.unsqueeze(0), (32, 32), margin=trainer.config.identity.window_margin
    )
    assert top > 0 and left > 0  # the landmarks really had to move
    assert float(window) == pytest.approx(float(full), abs=1e-5)


def test_loss_curves_figure_draws_every_loss_term():
    import pandas as pd

    from magicapture_pipeline.core.training.figures import loss_curves_figure

    history = pd.DataFrame(
        {
            "step": [1, 2, 3],
            "task": ["source", "reference", "composed"],
            "loss": [1.0, 0.8, 0.6],
            "loss_attn": [0.2, 0.1, 0.05],
            "lr_lora": [1e-4] * 3,
        }
    )
    image = loss_curves_figure(history, "stage two")
    assert image.mode == "RGB" and image.width > 300 and image.height > 200
    # the plot is not blank: a drawn figure has many distinct colours
    assert len(image.getcolors(maxcolors=1_000_000)) > 20
