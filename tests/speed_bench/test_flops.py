"""The meta-device FLOP counter of ``make bench-flops`` (speed_bench.flops): a hand count for one
layer, and that each added loss term adds work. No absolute numbers of the real sizes."""

from __future__ import annotations

import pytest
import torch

from magicapture_pipeline.speed_bench import flops as fl
from magicapture_pipeline.speed_bench import meta_step as ms


def _counted(fn) -> dict:
    recorder = fl.FlopRecorder()
    tape = ms.Tape(recorder)
    loss = tape.run("unet", fn)
    tape.backward(tape.run("loss", fl._total, loss))
    return recorder.flops


def test_counter_matches_a_hand_count_for_a_linear_and_a_conv():
    with ms.META:
        linear = torch.nn.Linear(48, 20, bias=False)
        conv = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1, bias=False)
    x = torch.empty(7, 48, device=ms.META)
    counted = _counted(lambda: linear(x))
    # forward 2*M*K*N; backward: the weight gradient only (x needs none), same size
    assert counted[("unet", "forward")] == 2 * 7 * 48 * 20
    assert counted[("unet", "backward")] == 2 * 7 * 48 * 20
    image = torch.empty(2, 3, 6, 4, device=ms.META)
    counted = _counted(lambda: conv(image))
    assert counted[("unet", "forward")] == 2 * (2 * 6 * 4) * 5 * (3 * 3 * 3)


@pytest.fixture(scope="module")
def sd15():
    return ms.build_meta_model("sd15_512")


@pytest.mark.slow
def test_each_added_term_adds_work(sd15):
    # counted as make bench-flops counts them (flops.measure): with the segment cache, which
    # counts exactly what running every segment counts (the test below), at a third of the cost
    cache: dict = {}
    steps = {name: fl.count_step(sd15, name, cache) for name in fl.VARIANTS}
    total = {name: table["total"] for name, table in steps.items()}
    unet = {name: steps[name]["by_component"]["unet"] for name in steps}
    # stage one trains the token rows: backward through the UNet to its input only
    # (each matmul/conv's input gradient costs what its forward did; no weight gradients)
    one = steps["stage1_step"]["by_component"]["unet"]
    assert 0.9 * one["forward"] < one["backward"] < 1.1 * one["forward"]
    assert total["stage1_step"] < total["stage2_plain_step"]
    assert total["stage2_eq8_eq7_full_step"] > total["stage2_eq8_step"]
    assert total["stage2_eq8_eq7_two_pass_step"] > total["stage2_eq8_eq7_full_step"]
    assert unet["stage2_eq8_eq7_two_pass_step"]["forward"] == 2 * unet["stage2_eq8_step"]["forward"]
    assert (
        total["stage2_eq8_eq7_taesd_step"]
        < total["stage2_eq8_eq7_face_window_step"]
        < total["stage2_eq8_eq7_full_step"]
    )
    vae = steps["stage2_eq8_eq7_full_step"]["by_component"]["vae"]
    assert vae["backward"] > 0 and steps["stage2_eq8_step"]["by_component"].get("vae") is None


@pytest.mark.slow
@pytest.mark.parametrize("size", ["sd15_dry", "sdxl_dry"])
def test_the_segment_cache_counts_exactly_what_running_every_segment_counts(size):
    from magicapture_pipeline.speed_bench.gpu_run import dry_sizes

    model = ms.build_meta_model(size, "official", size=dry_sizes()[size], arcface_arch="r18")
    cache: dict = {}
    for name in fl.VARIANTS:  # in bench order, so later variants replay earlier segments
        assert fl.count_step(model, name, cache) == fl.count_step(model, name), name
    # stage one (LoRA frozen) and two differ; the UNet with and without Eq. 8's capture differ
    unet_keys = {key[0] for key in cache if key[0][0] == "unet"}
    assert len(unet_keys) == 4  # stage one, stage two plain, one-resolution capture, every layer


def test_one_validation_is_its_images_generation_and_scoring():
    from magicapture_pipeline.speed_bench.gpu_run import dry_sizes
    from magicapture_pipeline.speed_bench.validation_cost import scoring_flops, validation_cost

    model = ms.build_meta_model("sd15_dry", size=dry_sizes()["sd15_dry"], arcface_arch="r18")
    with torch.no_grad():
        arcface = _counted(lambda: model.arcface(torch.empty(1, 3, 112, 112, device=ms.META)))
    clip = scoring_flops(model) - arcface[("unet", "forward")]
    # CLIP ViT-L/14 at 224 px by hand: 24 layers x 257 tokens x (4 attention projections +
    # a 4x MLP = 12 x 1024^2 MAC) + QK^T and AV (2 x 257^2 x 1024 MAC per layer), the 14 px patch
    # conv (256 x 1024 x 588) and the 768-d projection; 2 FLOPs per MAC
    tokens, width = 257, 1024
    layers = 24 * (12 * width**2 * tokens + 2 * tokens**2 * width)
    assert clip == 2 * (layers + 256 * width * 3 * 14 * 14 + width * 768)
    found = validation_cost(model, 10**12, {"flops": {"stage_two": 1500 * 10**13}})
    assert found["images"] == 2  # the default prompts x seeds
    assert found["validation_flops"] == 2 * (10**12 + scoring_flops(model))
    assert found["steps_compared"] == 100 and found["every_n_steps"] == 0  # off: per 100 steps
    assert found["validation_over_training"] == found["validation_flops"] / (100 * 10**13)
