"""The Eq. 7 / Eq. 8 loss-term objects on explicit inputs, without a model (stub capture,
stub scheduler): which map goes with which region, and when the identity term runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.core import losses
from magicapture_pipeline.core.training.attention_term import (
    AttentionRefocusingTerm,
    placeholder_positions,
)
from magicapture_pipeline.core.training.identity_term import IdentityTerm
from magicapture_pipeline.core.training.loop import region_mask

V1, V2 = 101, 202  # placeholder token ids
CPU = torch.device("cpu")


class _StubCapture:
    """Stands in for CrossAttentionCapture: one fixed map per prompt position."""

    layer_names = ("up_blocks.0.attentions.0.transformer_blocks.0.attn2",)

    def __init__(self, maps_by_position: dict[int, torch.Tensor]):
        self.maps = maps_by_position
        self.asked: list[list[int]] = []

    def token_maps(self, positions, per_map=False):
        self.asked.append(list(positions[0]))
        return torch.stack([self.maps[p] for p in positions[0]]).unsqueeze(0)

    def remove(self):
        self.removed = True


def _face_mask() -> torch.Tensor:
    """A face in the top-left corner only (not centred, not symmetric: a swap shows)."""
    mask = torch.zeros(1, 8, 8)
    mask[:, :3, :4] = 1.0
    return mask


def _maps() -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {2: torch.rand(8, 8, generator=generator), 5: torch.rand(8, 8, generator=generator)}


def _term(floor: float = 0.0, **settings) -> tuple[AttentionRefocusingTerm, _StubCapture]:
    capture = _StubCapture(_maps())
    config = AttentionConfig(**settings)
    return AttentionRefocusingTerm(config, capture, [V1, V2], floor, CPU), capture


def test_attention_term_is_none_when_off():
    off = AttentionConfig(enabled=False)
    assert AttentionRefocusingTerm.from_config(
        off, unet=None, token_ids=[V1, V2], mask_floor=0.0, device=CPU
    ) is None  # fmt: skip


def test_attention_term_pairs_v1_with_the_face_and_v2_with_the_rest():
    term, capture = _term()
    ids = torch.tensor([[0, 7, V1, 9, 9, V2, 3]])
    face = _face_mask()
    loss, logs = term(ids, face)
    assert capture.asked == [[2, 5]]
    maps = torch.stack([_maps()[2], _maps()[5]]).unsqueeze(0)
    regions = torch.cat([face, 1.0 - face]).unsqueeze(0)
    assert torch.equal(loss, losses.attention_refocusing_loss(maps, regions))
    swapped = torch.cat([1.0 - face, face]).unsqueeze(0)
    assert not torch.allclose(loss, losses.attention_refocusing_loss(maps, swapped))
    assert logs == {"loss_attn": loss.item()}


@pytest.mark.parametrize("order", ["average_then_scale", "scale_then_average"])
def test_attention_term_is_zero_when_each_token_attends_only_to_its_region(order):
    """[V1]'s map lies on the face, [V2]'s (a different, weaker map) on the rest: Eq. 8 is 0.
    Breaks caught: [V2] refocused onto the face (``region_mask(..., True)`` for both tokens) and
    the two maps averaged into one before the loss."""
    face = _face_mask()
    capture = _StubCapture({2: face[0].clone(), 5: 0.5 * (1.0 - face[0])})
    term = AttentionRefocusingTerm(AttentionConfig(scale_order=order), capture, [V1, V2], 0.0, CPU)
    loss, _ = term(torch.tensor([[0, 7, V1, 9, 9, V2, 3]]), face)
    assert loss.item() == 0.0
    lone, _ = term(torch.tensor([[0, 7, 4, 9, 9, V2, 3]]), face)  # [V2] alone: still 0
    assert lone.item() == 0.0


def test_attention_term_leaves_out_v1_without_a_face_and_none_without_tokens():
    term, capture = _term()
    loss, _ = term(torch.tensor([[0, V1, V2]]), torch.zeros(1, 8, 8))
    assert capture.asked == [[2]]  # only [V2] (position 2 here), whose region is everything
    alone = losses.attention_refocusing_loss(_maps()[2][None, None], torch.ones(1, 1, 8, 8))
    assert torch.equal(loss, alone)
    assert term(torch.tensor([[0, 1, 2]]), _face_mask()) is None


def test_attention_term_softens_its_masks_with_the_trainers_floor():
    soft, _ = _term(floor=0.05)
    hard, _ = _term(floor=0.0)
    ids, face = torch.tensor([[0, 7, V1, 9, 9, V2]]), _face_mask()
    assert not torch.equal(soft(ids, face)[0], hard(ids, face)[0])
    assert torch.equal(
        region_mask(face, True, floor=0.05, device=CPU),
        losses.soften_mask(face.unsqueeze(0), floor=0.05),
    )
    assert torch.equal(region_mask(face, False, floor=0.0, device=CPU), 1.0 - face.unsqueeze(0))


def test_placeholder_positions_are_first_occurrences_in_token_order():
    ids = torch.tensor([[V2, 4, V1, V2]])
    assert placeholder_positions(ids, [V1, V2]) == [(2, 0), (0, 1)]


class _Config(dict):
    """A diffusers-like config: keys readable as attributes."""

    __getattr__ = dict.__getitem__


def _identity(mode: str, threshold: float, **config) -> IdentityTerm:
    scheduler = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))
    vae = SimpleNamespace(config=_Config(scaling_factor=0.18215, block_out_channels=[8] * 4))
    return IdentityTerm(
        IdentityConfig(mode=mode, threshold_fraction=threshold, **config),
        encoder=None, source_embedding=torch.zeros(4), vae=vae, decoder=None,
        family="sd15", noise_scheduler=scheduler, device=CPU,
    )  # fmt: skip


@pytest.mark.parametrize(("t", "active"), [(0, True), (399, True), (400, False), (999, False)])
def test_identity_term_runs_below_t_prime(t, active):
    term = _identity("single_pass", 0.4)
    assert term.active(torch.tensor([t])) is active
    assert not term.two_pass and term.timestep_limit == 400
    assert term.latent_factor == 8  # diffusers' vae_scale_factor of a 4-level VAE


def test_identity_term_two_pass_draws_below_t_prime_at_least_one():
    assert _identity("two_pass", 0.4).two_pass
    assert _identity("two_pass", 0.0001).timestep_limit == 1


@pytest.mark.parametrize(("native", "expected"), [(False, None), (True, torch.bfloat16)])
def test_identity_bf16_autocast_on_cpu_only_where_the_cpu_has_native_bf16(
    monkeypatch, caplog, native, expected
):
    """bf16 is a speed option only where the hardware computes it: emulated bf16 made one ArcFace
    forward ~27x slower than fp32 on the build machine, so there it is left off, with a warning;
    with native bf16 (AVX512-BF16/AMX) the identity branch autocasts to bf16."""
    from magicapture_pipeline.core.training import identity_term

    monkeypatch.setattr(identity_term, "cpu_has_native_bf16", lambda: native)
    term = _identity("single_pass", 0.8, autocast_dtype="bf16")
    with caplog.at_level("WARNING"), term._autocast():
        enabled = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if enabled else None
    assert dtype == expected
    assert ("no native bfloat16" in caplog.text) is (not native)


def test_cpu_bf16_probe_reads_torch_and_defaults_to_no(monkeypatch):
    from magicapture_pipeline.core.training.identity_term import cpu_has_native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_native_bf16() is True
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert cpu_has_native_bf16() is False
