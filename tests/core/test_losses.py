"""Each loss of Eq. 4-8 against its equation, on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from magicapture_pipeline.core.losses import (
    attention_refocusing_loss,
    identity_loss,
    identity_loss_active,
    masked_reconstruction_loss,
    min_max_scale,
    one_step_x0_estimate,
    soften_mask,
)


def _half_mask(batch: int = 2, size: int = 4) -> torch.Tensor:
    mask = torch.zeros(batch, 1, size, size)
    mask[..., : size // 2, :] = 1.0
    return mask


# ---------------------------------------------------------------- Eq. 4-6: masked reconstruction
@pytest.mark.parametrize(
    ("inside", "outside", "expected"),
    [
        (1.0, 0.0, 1.0),  # error only inside: full MSE of the masked pixels
        (0.0, 5.0, 0.0),  # error only outside: ignored
        (2.0, 3.0, 4.0),  # inside error 2 -> squared 4, the outside error does not count
    ],
)
def test_masked_loss_is_mse_inside_binary_mask(inside, outside, expected):
    mask = _half_mask()
    target = torch.zeros(2, 4, 4, 4)
    pred = torch.where(mask.bool().expand_as(target), inside, outside)
    assert masked_reconstruction_loss(pred, target, mask).item() == pytest.approx(expected)


def test_masked_loss_matches_equation_with_soft_mask():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = torch.rand(2, 1, 8, 8)
    expected = torch.stack(
        [((mask[i] * (pred[i] - target[i])) ** 2).sum() / (4 * mask[i].sum()) for i in range(2)]
    ).mean()
    assert masked_reconstruction_loss(pred, target, mask).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_masked_loss_normalises_each_sample_by_its_own_area():
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.ones(2, 1, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, 0, 0] = 1.0  # one pixel
    mask[1] = 1.0  # every pixel
    assert masked_reconstruction_loss(pred, target, mask).item() == pytest.approx(1.0)


def test_masked_loss_gradient_is_exactly_zero_outside_mask():
    torch.manual_seed(0)
    pred = torch.randn(2, 4, 4, 4, requires_grad=True)
    mask = _half_mask()
    masked_reconstruction_loss(pred, torch.randn(2, 4, 4, 4), mask).backward()
    outside = ~mask.bool().expand_as(pred)
    assert torch.count_nonzero(pred.grad[outside]) == 0
    assert torch.count_nonzero(pred.grad[~outside]) == int((~outside).sum())


def test_masked_loss_empty_mask_is_zero_not_nan():
    loss = masked_reconstruction_loss(
        torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.zeros(1, 1, 2, 2)
    )
    assert loss.item() == 0.0


def test_masked_loss_rejects_mask_at_wrong_size():
    with pytest.raises(ValueError, match="latent size"):
        masked_reconstruction_loss(
            torch.ones(1, 4, 4, 4), torch.ones(1, 4, 4, 4), torch.ones(1, 1, 8, 8)
        )


def test_soften_mask_follows_official_formula():
    mask = torch.tensor([[[[0.0, 1.0]]]])
    soft = soften_mask(mask, floor=0.01, temperature=1.0)
    assert soft[0, 0, 0].tolist() == pytest.approx([0.01 / 1.01, 1.0])


# ---------------------------------------------------------------- Eq. 7: x0 estimate + identity
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_one_step_estimate_recovers_clean_latent_from_exact_prediction(prediction_type):
    torch.manual_seed(0)
    alphas_cumprod = torch.linspace(0.99, 0.01, 1000)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    zt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    output = {
        "epsilon": noise,
        "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0,
        "sample": x0,
    }[prediction_type]
    estimate = one_step_x0_estimate(zt, output, t, alphas_cumprod, prediction_type)
    torch.testing.assert_close(estimate, x0, atol=1e-4, rtol=1e-4)


def test_one_step_estimate_rejects_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type"):
        one_step_x0_estimate(
            torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0]), torch.ones(10), "flow"
        )


@pytest.mark.parametrize(
    ("generated", "source", "expected"),
    [
        ([[1.0, 0.0]], [[3.0, 0.0]], 0.0),  # same direction, any norm
        ([[1.0, 0.0]], [[0.0, 2.0]], 1.0),  # orthogonal
        ([[1.0, 0.0]], [[-1.0, 0.0]], 2.0),  # opposite
        ([[1.0, 0.0], [0.0, 1.0]], [1.0, 0.0], 0.5),  # one source vector, batch mean of 0 and 1
        ([[1.0, 1.0]], [[1.0, 0.0]], 1.0 - 1.0 / math.sqrt(2.0)),
    ],
)
def test_identity_loss_is_one_minus_cosine(generated, source, expected):
    loss = identity_loss(torch.tensor(generated), torch.tensor(source))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("timesteps", "fraction", "expected"),
    [([0, 799, 800, 999], 0.8, [True, True, False, False]), ([499, 500], 0.5, [True, False])],
)
def test_identity_loss_active_below_threshold(timesteps, fraction, expected):
    active = identity_loss_active(torch.tensor(timesteps), 1000, fraction)
    assert active.tolist() == expected


# ---------------------------------------------------------------- Eq. 8: attention refocusing
def test_min_max_scale_maps_to_unit_range_and_constant_to_zero():
    maps = torch.stack([torch.arange(4.0).view(2, 2), torch.full((2, 2), 3.0)]).unsqueeze(0)
    scaled = min_max_scale(maps)
    assert scaled[0, 0].flatten().tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert scaled[0, 1].abs().sum().item() == 0.0


def test_ar_loss_zero_when_attention_inside_mask():
    mask = _half_mask(1, 4)
    attention = torch.rand(1, 1, 4, 4) * mask + 0.0  # nothing outside the region
    assert attention_refocusing_loss(attention, mask).item() == 0.0


def test_ar_loss_matches_equation_when_attention_leaks():
    mask = _half_mask(1, 4)
    attention = torch.zeros(1, 1, 4, 4)
    attention[0, 0, 3, 0] = 0.2  # one leaking pixel, the map's maximum
    attention[0, 0, 0, 0] = 0.1
    # min-max: leaking pixel -> 1.0; ||A (1 - M)||^2 averaged over 16 pixels
    assert attention_refocusing_loss(attention, mask).item() == pytest.approx(1.0 / 16)


def test_ar_loss_per_token_masks_and_broadcast():
    face = _half_mask(1, 4)
    masks = torch.cat([face, 1 - face], dim=1)  # [V1] -> face, [V2] -> non-face
    attention = torch.cat([face, face], dim=1)  # both tokens attend to the face
    loss = attention_refocusing_loss(attention, masks)
    # [V1] in its region: 0; [V2] entirely outside: mean over 16 pixels of 8 ones -> 0.5
    assert loss.item() == pytest.approx(0.25)
    assert attention_refocusing_loss(attention, face).item() == 0.0


@pytest.mark.parametrize("order", ["average_then_scale", "scale_then_average"])
def test_ar_loss_keeps_each_tokens_own_map(order):
    """[V1] attends only to the face, [V2] only to the rest, at a different strength (different
    maps per token, an off-centre face): each inside its own region, so Eq. 8 is exactly 0; with
    the regions swapped every scaled pixel of both maps is outside: the mean of 6/16 and 10/16.
    Breaks caught: the maps averaged over the token axis (both tokens then share one map that
    lies in both regions) and [V2]'s region set to the face.
    """
    face = torch.zeros(1, 1, 4, 4)
    face[..., :3, :2] = 1.0  # top-left corner, 6 of 16 pixels
    maps = torch.cat([face, 0.5 * (1.0 - face)], dim=1)  # (1, 2, 4, 4): [V1] on the face only
    per_head = maps.unsqueeze(2).expand(1, 2, 3, 4, 4)  # the same with 3 head/layer maps
    regions = torch.cat([face, 1.0 - face], dim=1)
    swapped = torch.cat([1.0 - face, face], dim=1)
    for attention in (maps, per_head):
        assert attention_refocusing_loss(attention, regions, order=order).item() == 0.0
        assert attention_refocusing_loss(attention, swapped, order=order).item() == (
            pytest.approx(6 / 16 / 2 + 10 / 16 / 2)
        )


def test_ar_loss_upsamples_maps_to_mask_size_and_has_gradient():
    mask = _half_mask(1, 16)
    attention = torch.rand(1, 2, 4, 4, requires_grad=True)
    loss = attention_refocusing_loss(attention, mask)
    loss.backward()
    assert loss.item() > 0
    assert attention.grad is not None and attention.grad.abs().sum() > 0


def _outside_peak_map() -> tuple[torch.Tensor, torch.Tensor]:
    """An 8x8 map whose peak (0.9) lies outside the token's region (the top half)."""
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(1, 1, 8, 8, generator=generator) * 0.3
    attention[0, 0, 6, 5] = 0.9  # bottom half: outside
    return attention, _half_mask(1, 8)


def test_ar_loss_gives_an_outside_peak_a_positive_gradient():
    """Descent must lower a peak that lies outside the region. With a differentiable max the
    peak's only gradient comes through the max and is negative (descent raises it)."""
    attention, mask = _outside_peak_map()
    attention.requires_grad_(True)
    attention_refocusing_loss(attention, mask).backward()
    grad = attention.grad[0, 0]
    assert grad[6, 5] > 0
    assert (grad[4:] >= 0).all()  # every outside pixel: pushed down (or left alone at the min)
    assert (grad[:4] == 0).all()  # inside the region: no gradient at all


def test_ar_descent_lowers_an_outside_peak():
    """The toy of issue 10: 200 plain gradient-descent steps on the raw map."""
    attention, mask = _outside_peak_map()
    attention.requires_grad_(True)
    optimiser = torch.optim.SGD([attention], lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        attention_refocusing_loss(attention, mask).backward()
        optimiser.step()
    assert attention[0, 0, 6, 5].item() < 0.85


def test_min_max_scale_holds_min_and_max_constant():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]], requires_grad=True)
    scaled = min_max_scale(maps)
    scaled[0, 1, 1].backward()  # the maximum's own scaled value: 1 / (max - min) * d max
    assert maps.grad[0, 1, 1].item() == pytest.approx(0.25)
    assert maps.grad[0, 0, 0].item() == 0.0  # the minimum is a constant, too


def test_ar_loss_orders_agree_on_one_map_and_differ_on_several():
    mask = _half_mask(1, 4)
    generator = torch.Generator().manual_seed(3)
    per_map = torch.rand(1, 1, 5, 4, 4, generator=generator)
    per_map[0, 0, 0] *= 10.0  # one loud head: scaling each map first changes the result
    one = per_map[:, :, :1]
    assert attention_refocusing_loss(one, mask, order="scale_then_average").item() == (
        pytest.approx(attention_refocusing_loss(one[:, :, 0], mask).item())
    )
    authors = attention_refocusing_loss(per_map, mask, order="scale_then_average")
    manual = torch.stack([min_max_scale(per_map[0, 0, m]) for m in range(5)]).mean(0)
    expected = (manual * (1 - mask[0, 0])).pow(2).mean()
    assert authors.item() == pytest.approx(expected.item())
    averaged = attention_refocusing_loss(per_map, mask, order="average_then_scale")
    assert averaged.item() == pytest.approx(
        attention_refocusing_loss(per_map.mean(dim=2), mask).item()
    )
    assert abs(authors.item() - averaged.item()) > 1e-3
    with pytest.raises(ValueError, match="order"):
        attention_refocusing_loss(per_map, mask, order="sideways")
