"""Cross-attention capture: right layers, same numbers as SDPA, maps that are probabilities."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from magicapture_pipeline.core.models.attention import (
    CrossAttentionCapture,
    cross_attention_layers,
)
from magicapture_pipeline.core.models.random_weights import SD15_UNET

SD15_UNET_BLOCKS = {key: SD15_UNET[key] for key in ("down_block_types", "up_block_types")}


def _tiny_unet(**overrides) -> UNet2DConditionModel:
    torch.manual_seed(0)
    config = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    }
    config.update(overrides)
    return UNet2DConditionModel(**config).eval()


def _sd15_shaped_unet() -> UNet2DConditionModel:
    """SD 1.5's block layout with tiny widths, so layer selection can be checked cheaply."""
    return _tiny_unet(
        sample_size=64,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        attention_head_dim=2,
        cross_attention_dim=8,
        **SD15_UNET_BLOCKS,
    )


def _inputs(batch: int = 2, size: int = 8, tokens: int = 77, dim: int = 32):
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, 4, size, size, generator=generator),
        torch.tensor([10, 500][:batch] + [900] * max(0, batch - 2)),
        torch.randn(batch, tokens, dim, generator=generator),
    )


@pytest.mark.parametrize(
    ("resolution", "expected_blocks"),
    [
        (16, {"down_blocks.2", "up_blocks.1"}),  # the official 16x16 layers of SD 1.5
        (None, {"down_blocks.2", "up_blocks.1"}),  # the default picks the same
        (64, {"down_blocks.0", "up_blocks.3"}),
        (32, {"down_blocks.1", "up_blocks.2"}),
    ],
)
def test_sd15_layer_selection(resolution, expected_blocks):
    names = cross_attention_layers(_sd15_shaped_unet(), resolution)
    assert {name.split(".attentions")[0] for name in names} == expected_blocks
    assert all(name.endswith("attn2") for name in names)


def test_tiny_unet_default_is_its_only_cross_attention_resolution():
    names = cross_attention_layers(_tiny_unet())
    assert {n.split(".attentions")[0] for n in names} == {"down_blocks.0", "up_blocks.1"}
    with pytest.raises(ValueError, match="no attn2 at resolution"):
        cross_attention_layers(_tiny_unet(), 3)


def test_capture_touches_only_selected_layers_and_restores_sdpa():
    unet = _tiny_unet()
    names = set(cross_attention_layers(unet))
    with CrossAttentionCapture(unet) as capture:
        for key, processor in unet.attn_processors.items():
            module_name = key.removesuffix(".processor")
            assert (type(processor).__name__ == "_CaptureProcessor") == (module_name in names)
        assert capture.layer_names
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())


@pytest.mark.parametrize("lora", [False, True])
def test_capture_output_equals_sdpa_and_maps_are_probabilities(lora):
    unet = _tiny_unet()
    if lora:
        from peft import LoraConfig

        unet.add_adapter(
            LoraConfig(
                r=4,
                lora_alpha=4,
                init_lora_weights="gaussian",
                target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            )
        )
    sample, t, text = _inputs()
    with torch.no_grad():
        reference = unet(sample, t, text).sample
    with CrossAttentionCapture(unet) as capture, torch.no_grad():
        captured = unet(sample, t, text).sample
        maps = capture.token_maps(list(range(77)))
        # down_blocks.0 (1 attention) and up_blocks.1 (2 attentions), one call each
        assert capture.num_captured == len(capture.layer_names) == 3
    torch.testing.assert_close(captured, reference, atol=1e-5, rtol=1e-5)
    assert maps.shape == (2, 77, 8, 8)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 8, 8), atol=1e-5, rtol=1e-5)
    assert maps.min() >= 0


def test_token_maps_index_forms_agree_and_carry_gradient():
    unet = _tiny_unet()
    sample, t, text = _inputs()
    text.requires_grad_(True)
    with CrossAttentionCapture(unet) as capture:
        unet(sample, t, text)
        per_sample = capture.token_maps([[3, 5], [4, 6]])
        as_tensor = capture.token_maps(torch.tensor([[3, 5], [4, 6]]))
        shared = capture.token_maps([3, 5])
        assert per_sample.shape == (2, 2, 8, 8)
        torch.testing.assert_close(per_sample, as_tensor)
        torch.testing.assert_close(shared[0], per_sample[0])
        per_sample.sum().backward()
    assert text.grad is not None and text.grad[:, [3, 5]].abs().sum() > 0


def test_capture_is_cleared_each_forward_and_can_be_disabled():
    unet = _tiny_unet()
    sample, t, text = _inputs()
    with CrossAttentionCapture(unet) as capture, torch.no_grad():
        unet(sample, t, text)
        unet(sample, t, text)
        assert capture.num_captured == 3  # only the latest forward's 3 layers
        capture.enabled = False
        unet(sample, t, text)
        assert capture.num_captured == 3  # a disabled pass neither stores nor clears
        capture.clear()
        assert capture.num_captured == 0
        with pytest.raises(RuntimeError, match="no cross-attention captured"):
            capture.token_maps([1])


def test_non_square_latent_maps_keep_aspect():
    unet = _tiny_unet()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 16, generator=generator)
    with CrossAttentionCapture(unet) as capture, torch.no_grad():
        unet(sample, torch.tensor([5]), torch.randn(1, 77, 32, generator=generator))
        assert capture.token_maps([1, 2]).shape == (1, 2, 8, 16)


@pytest.mark.parametrize(
    ("attention_rows", "mask_rows", "expected"),
    [
        ([1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], 1.0),  # all mass inside
        ([0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], 0.0),  # all outside
        ([3.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], 0.75),
    ],
)
def test_attention_mass_inside(attention_rows, mask_rows, expected):
    from magicapture_pipeline.core.models.attention import attention_mass_inside

    maps = torch.tensor(attention_rows).view(1, 1, 4, 1).expand(1, 1, 4, 4)
    masks = torch.tensor(mask_rows).view(1, 1, 4, 1).expand(1, 1, 4, 4)
    assert attention_mass_inside(maps, masks).item() == pytest.approx(expected)
    big_masks = torch.nn.functional.interpolate(masks, scale_factor=2, mode="nearest")
    assert attention_mass_inside(maps, big_masks).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("setting", "dtype"),
    [("scale", torch.float32), ("upcast", torch.bfloat16)],
)
def test_capture_honours_the_attention_scale_and_upcast_settings(setting, dtype):
    """The capture computes what diffusers' own AttnProcessor computes for these settings
    (``attn.scale``, ``upcast_attention``/``upcast_softmax``), bit for bit; a processor that
    hand-computes ``QK^T / sqrt(d)`` in the input dtype does not."""
    from diffusers.models.attention_processor import AttnProcessor

    unet = _tiny_unet().to(dtype)
    attn_names = [name for name, _ in unet.named_modules() if name.endswith("attn2")]
    modules = dict(unet.named_modules())
    for name in attn_names:
        module = modules[name]
        if setting == "scale":
            module.scale = 0.37  # not 1/sqrt(head_dim)
        else:
            module.upcast_attention = module.upcast_softmax = True
    sample, t, text = _inputs()
    sample, text = sample.to(dtype), text.to(dtype)
    unet.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        reference = unet(sample, t, text).sample
    with CrossAttentionCapture(unet, layer_names=attn_names) as capture, torch.no_grad():
        captured = unet(sample, t, text).sample
        assert capture.num_captured == len(attn_names)
    torch.testing.assert_close(captured, reference, atol=0, rtol=0)


def test_per_map_returns_every_head_of_every_layer_and_their_mean_is_the_default():
    unet = _tiny_unet()
    sample, t, text = _inputs()
    heads = {name: m.heads for name, m in unet.named_modules() if name.endswith("attn2")}
    with torch.no_grad(), CrossAttentionCapture(unet, keep_heads=True) as capture:
        unet(sample, t, text)
        per_head = capture.token_maps([3, 5], per_map=True)
        mean = capture.token_maps([3, 5])
        layers = capture.layer_names
    assert per_head.shape == (2, 2, sum(heads[name] for name in layers), 8, 8)
    with torch.no_grad(), CrossAttentionCapture(unet) as capture:
        unet(sample, t, text)
        per_layer = capture.token_maps([3, 5], per_map=True)
        torch.testing.assert_close(capture.token_maps([3, 5]), mean)
    assert per_layer.shape == (2, 2, len(layers), 8, 8)
    torch.testing.assert_close(per_layer.mean(dim=2), mean)
