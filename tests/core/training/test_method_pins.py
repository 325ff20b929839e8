"""Pins of stage two's method at the trainer (issue 18 §5): defects that left every other test
green. Inputs are chosen so that a swap shows: the two roles get different, off-centre masks and
different images, T' is below 1.0, and the tokens are told apart.

Each test names the break it was seen to catch (introduced by hand once, then restored).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conftest import LANDMARKS, RES, random_identity
from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.config.training import StageTwoConfig
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageTwoTrainer, TrainingExample
from magicapture_pipeline.core.training.examples import COMPOSED, REFERENCE, SOURCE

LATENT = RES // 8
V1, V2 = "<v1>", "<v2>"


def role_mask(role: str) -> torch.Tensor:
    """Off-centre, asymmetric latent masks that differ by role: the source face in the top-left
    corner, the reference face in the bottom-right one (disjoint, neither symmetric under a flip).
    """
    mask = torch.zeros(1, LATENT, LATENT)
    if role == SOURCE:
        mask[:, 0:3, 0:4] = 1.0
    else:
        mask[:, 4:8, 5:8] = 1.0
    return mask


def role_examples() -> list[TrainingExample]:
    """Two source and two reference examples: different pixels per role (sources dark, references
    bright), the masks of :func:`role_mask`, the conftest landmarks."""
    generator = torch.Generator().manual_seed(0)
    examples = []
    for role, offset in ((SOURCE, -0.6), (REFERENCE, 0.6)):
        for i in range(2):
            image = (torch.rand(3, RES, RES, generator=generator) * 0.6 - 0.3 + offset).clamp(-1, 1)
            examples.append(
                TrainingExample(f"{role}{i}", role, image, role_mask(role), torch.tensor(LANDMARKS))
            )
    return examples


def trainer(tiny_dir, **overrides: Any) -> StageTwoTrainer:
    values: dict[str, Any] = {
        "max_steps": 3,
        "gradient_accumulation_steps": 1,
        "mixed_precision": "no",
        "heatmap_every": 0,
        "hflip": False,
        "attention": AttentionConfig(enabled=False, resolution=8),
        "identity": IdentityConfig(mode="off"),
    }
    return StageTwoTrainer(
        load_components(tiny_dir),
        role_examples(),
        StageTwoConfig(**{**values, **overrides}),
        {V1: torch.full((32,), 0.1), V2: torch.full((32,), -0.1)},
    )


# ------------------------------------------------------------------ the composed task (Eq. 6)
def test_each_task_encodes_its_own_prompt(tiny_dir):
    """Composed: a composed template with both [V1] and [V2] (Eq. 6 trains "[V1] ... [V2]");
    reference: [V2] only; source: [V1] only. Break caught: the composed task encoding the
    reference prompt (``_prompt`` returning the reference template for ``composed``)."""
    for task, weights in ((COMPOSED, [0, 0, 1]), (REFERENCE, [0, 1, 0]), (SOURCE, [1, 0, 0])):
        model = trainer(tiny_dir, task_weights=weights)
        prompts: list[str] = []
        encode = model._encode_prompt
        model._encode_prompt = lambda prompt: prompts.append(prompt) or encode(prompt)
        _, _, sampled = model._micro_step()
        assert sampled == task
        cfg = model.config
        if task == COMPOSED:
            allowed = {t.format(v1=V1, v2=V2) for t in cfg.composed_templates}
        elif task == REFERENCE:
            allowed = {t.format(V2) for t in cfg.reference_templates}
        else:
            allowed = {t.format(V1) for t in cfg.source_templates}
        assert prompts[0] in allowed, (task, prompts[0])
        assert (V1 in prompts[0], V2 in prompts[0]) == {
            COMPOSED: (True, True),
            REFERENCE: (False, True),
            SOURCE: (True, False),
        }[task]


def _prediction_gradient(model: StageTwoTrainer) -> tuple[torch.Tensor, torch.Tensor, str]:
    """d(loss)/d(UNet output), the clean latents the step encoded, and the task."""
    seen: dict[str, torch.Tensor] = {}
    predict, latents_of = model._predict, model._latents

    def spy_predict(*args, **kwargs):
        out = predict(*args, **kwargs)
        out.retain_grad()
        seen.setdefault("pred", out)
        return out

    def spy_latents(variant):
        out = latents_of(variant)
        seen["image"] = variant.example.image
        return out

    model._predict, model._latents = spy_predict, spy_latents
    loss, _, task = model._micro_step()
    loss.backward()
    return seen["pred"].grad[0], seen["image"], task


@pytest.mark.parametrize(("weights", "role"), [([0, 0, 1], REFERENCE), ([1, 0, 0], SOURCE)])
def test_composed_task_is_pseudo_labelled_by_a_reference_image(tiny_dir, weights, role):
    """The composed task's target is a reference image and its loss region the complement of
    that reference's face (not the source's); the source task's is a source image inside the
    source face. The roles' masks are disjoint, so a swap moves the zero-gradient region.
    Break caught: ``_sample_variant(SOURCE if task != REFERENCE else REFERENCE)`` (the
    composed task labelled by a source image)."""
    model = trainer(tiny_dir, task_weights=weights)
    grad, image, _ = _prediction_gradient(model)
    assert any(torch.equal(image, e.image) for e in role_examples() if e.role == role)
    face = role_mask(role)[0] > 0.5
    region = face if role == SOURCE else ~face
    assert grad[:, ~region].abs().max().item() == 0.0
    assert (grad[:, region].abs().sum(0) > 0).all()  # every pixel of the region trains


# ------------------------------------------------------------------------------ flips
def test_a_flipped_example_carries_the_flipped_mask(tiny_dir):
    """With ``hflip`` each example's mirrored variant has the mirrored image, mask and landmarks
    (the masks are asymmetric, so keeping the unflipped one shows). Break caught:
    ``TrainingExample.flipped`` returning ``self.face_mask`` unflipped."""
    model = trainer(tiny_dir, hflip=True)
    for role in (SOURCE, REFERENCE):
        for plain, mirrored in model.variants[role]:
            a, b = plain.example, mirrored.example
            assert torch.equal(b.image, a.image.flip(-1))
            assert torch.equal(b.face_mask, role_mask(role).flip(-1))
            assert not torch.equal(b.face_mask, a.face_mask)
            assert torch.allclose(b.landmarks5[1, 0], RES - 1 - a.landmarks5[0, 0])


# ---------------------------------------------------------------------------------- Eq. 7
def _identity_config(mode: str, threshold: float) -> IdentityConfig:
    return random_identity(mode=mode, threshold_fraction=threshold)


def test_identity_target_is_the_source_photos_embedding(tiny_dir):
    """Eq. 7's target is the normalised mean ArcFace embedding of the source photos (sources
    and references differ here). Break caught: the target computed from the reference images
    (``sources=`` given ``self.variants[REFERENCE]`` in ``StageTwoTrainer``)."""
    model = trainer(tiny_dir, task_weights=[0, 0, 1], identity=_identity_config("two_pass", 0.4))
    term = model.identity_term
    assert term is not None

    def embedding(role: str) -> torch.Tensor:
        chosen = [e for e in role_examples() if e.role == role]
        images = torch.stack([e.image for e in chosen])
        marks = torch.stack([e.landmarks5 for e in chosen]).float()
        with torch.no_grad():
            return F.normalize(term.encoder(images, marks).mean(0), dim=-1)

    source, reference = embedding(SOURCE), embedding(REFERENCE)
    assert torch.allclose(term.source_embedding, source, atol=1e-5)
    assert not torch.allclose(source, reference, atol=1e-3)  # the inputs can tell them apart


class _Recorder:
    """Wraps the trainer's identity term: records the timesteps each Eq. 7 call sees."""

    def __init__(self, term):
        self.term, self.timesteps = term, []

    def __getattr__(self, name):
        return getattr(self.term, name)

    def __call__(self, noisy, pred, timesteps, landmarks5):
        self.timesteps.extend(int(t) for t in timesteps)
        return self.term(noisy, pred, timesteps, landmarks5)


@pytest.mark.parametrize("mode", ["two_pass", "single_pass"])
def test_identity_runs_only_below_t_prime_at_the_trainer(tiny_dir, mode):
    """T' below 1.0 at trainer level (two_pass 0.1, single_pass 0.5, of 1000 timesteps): every
    timestep that reaches Eq. 7 over a few composed micro-steps is below T', and (two_pass)
    every step runs it. Break caught (two_pass):
    the second pass drawing ``t`` over all 1000 timesteps (``term.timestep_limit`` ignored);
    (single_pass) ``term.active`` ignored."""
    fraction, steps = {"two_pass": (0.1, 4), "single_pass": (0.5, 8)}[mode]
    limit = int(fraction * 1000)
    model = trainer(tiny_dir, task_weights=[0, 0, 1], identity=_identity_config(mode, fraction))
    recorder = _Recorder(model.identity_term)
    model.identity_term = recorder
    drawn: list[int] = []
    noisy = model._noisy

    def spy_noisy(latents, timestep=None, **kwargs):  # kwargs: two-pass hands the step's noise
        out = noisy(latents, timestep, **kwargs)
        if timestep is None:
            drawn.extend(int(t) for t in out[2])
        return out

    model._noisy = spy_noisy
    for _ in range(steps):
        with torch.no_grad():
            model._micro_step()
    assert recorder.timesteps and max(recorder.timesteps) < limit
    if mode == "two_pass":
        assert len(recorder.timesteps) == steps
    else:  # the seeded draws include timesteps on both sides of T'
        assert min(drawn) < limit <= max(drawn)
        assert len(recorder.timesteps) == sum(t < limit for t in drawn)
