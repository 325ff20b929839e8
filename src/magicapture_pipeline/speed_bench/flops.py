"""``make bench-flops``: the work of every step at real size, counted on the meta device.

``python -m magicapture_pipeline.speed_bench.flops`` counts, with torch's ``FlopCounterMode``,
SD 1.5 at 512 px and SDXL base at 1024 px (the published architectures, :mod:`.meta_step`):
each step variant split into forward / backward and text encoder / UNet / VAE / identity network,
one generated image, and a whole customization for the paper (default) and official recipes;
then the floor on an H100 (dense bf16 peak) and H100-seconds at 35 % utilisation. Writes
``data/08_reporting/bench_flops.{json,md}``. Deterministic: no weights, no timing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from magicapture_pipeline.speed_bench import meta_step as ms
from magicapture_pipeline.speed_bench.flop_cache import CachingTape, _Counted

H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM datasheet: dense BF16 tensor-core peak
UTILISATION = 0.35  # ours: a typical share of peak for a diffusion training step
MARGIN = 4  # identity.window_margin's default

# name -> (stage, Eq. 8 capture: None / "one" / "every", Eq. 7: None / (passes, decoder))
VARIANTS: dict[str, tuple[str, str | None, tuple[int, str] | None]] = {
    "stage1_step": ("one", None, None),
    "stage2_plain_step": ("two", None, None),
    "stage2_eq8_step": ("two", "one", None),
    "stage2_eq8_eq7_full_step": ("two", "one", (1, "full")),
    "stage2_eq8_eq7_face_window_step": ("two", "one", (1, "face_window")),
    "stage2_eq8_eq7_taesd_step": ("two", "one", (1, "taesd")),
    "stage2_eq8_eq7_two_pass_step": ("two", "one", (2, "full")),
    # the authors' way (trainer_bench's stage2_authors_step_s): every attention layer's maps per
    # head, a second UNet pass for Eq. 7, full decode
    "stage2_authors_step": ("two", "every", (2, "full")),
}
DEFAULT_STEP = "stage2_eq8_eq7_full_step"  # identity: single_pass, decode_region: full


class FlopRecorder(ms.Recorder):
    """FLOPs per ``(component, phase)``, counted by ``FlopCounterMode``."""

    def __init__(self) -> None:
        self.flops: dict[tuple[str, str], int] = {}

    @contextlib.contextmanager
    def segment(self, component: str, phase: str) -> Iterator[None]:
        counter = FlopCounterMode(display=False)
        with counter:
            yield
        key = (component, phase)
        self.flops[key] = self.flops.get(key, 0) + counter.get_total_flops()

    def add(self, component: str, phase: str, value: int) -> None:
        """Count ``value`` FLOPs to ``(component, phase)`` without running anything."""
        self.flops[(component, phase)] = self.flops.get((component, phase), 0) + value

    def table(self) -> dict[str, Any]:
        """``{"total", "forward", "backward", "by_component": {c: {forward, backward}}}``."""
        parts: dict[str, dict[str, int]] = {}
        for (component, phase), value in self.flops.items():
            parts.setdefault(component, {"forward": 0, "backward": 0})[phase] += value
        forward = sum(p["forward"] for p in parts.values())
        backward = sum(p["backward"] for p in parts.values())
        return {
            "total": forward + backward,
            "forward": forward,
            "backward": backward,
            "by_component": parts,
        }


def run_step(model: ms.MetaModel, variant: str, tape: ms.Tape) -> None:
    """One micro-step of ``variant`` (:data:`VARIANTS`) on ``tape``, forward and backward."""
    stage, refocus, identity = VARIANTS[variant]
    capture = ms.capture(model, refocus == "every") if refocus else None
    if capture is not None:
        capture.install()
    try:
        states, pooled = ms.encode_prompt(tape, model)
        pred, attention = ms.unet_forward(tape, model, states, pooled, refocus=capture)
        terms = [pred]
        if attention is not None:
            terms.append(attention)
        if identity is not None:
            passes, decoder = identity
            if passes == 2:  # the official second forward (its maps are not read)
                if capture is not None:
                    capture.enabled = False
                pred, _ = ms.unet_forward(tape, model, states, pooled)
            terms.append(ms.identity_term(tape, model, pred, decoder, MARGIN))
        loss = tape.run("loss", _total, *terms)
        tape.backward(loss)
    finally:
        if capture is not None:
            capture.remove()


def _total(*terms: torch.Tensor) -> torch.Tensor:
    """The loss segment: each term reduced to a scalar (elementwise work, not counted)."""
    return sum(t.float().pow(2).mean() if t.ndim else t for t in terms)


def count_step(
    model: ms.MetaModel, variant: str, cache: dict[Any, _Counted] | None = None
) -> dict[str, Any]:
    """FLOPs of one micro-step of ``variant`` (one image); segments counted before in
    ``cache`` (one per model) are replayed, not run."""
    recorder = FlopRecorder()
    tape = ms.Tape(recorder) if cache is None else CachingTape(recorder, cache)
    with _stage(model, VARIANTS[variant][0]):
        run_step(model, variant, tape)
    return recorder.table()


@contextlib.contextmanager
def _stage(model: ms.MetaModel, stage: str) -> Iterator[None]:
    """Stage one trains the token rows only: the LoRA is frozen (and contributes nothing)."""
    lora = [
        p
        for module in (model.unet, *model.text_encoders)
        for name, p in module.named_parameters()
        if "lora_" in name
    ]
    frozen = stage == "one"
    if frozen:
        for p in lora:
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p in lora:
            p.requires_grad_(True)


def count_generation(model: ms.MetaModel, steps: int = 50) -> dict[str, Any]:
    """One image: ``steps`` UNet forwards with classifier-free guidance (batch 2) + decode."""
    recorder = FlopRecorder()
    tape = ms.Tape(recorder)
    with torch.no_grad():
        states, pooled = ms.encode_prompt(tape, model, batch=2)
        before = dict(recorder.flops)
        ms.unet_forward(tape, model, states, pooled, batch=2)
        one = recorder.flops[("unet", "forward")] - before.get(("unet", "forward"), 0)
        recorder.flops[("unet", "forward")] += one * (steps - 1)
        latent = model.tensor(1, 4, model.latent, model.latent)
        tape.run("vae", lambda z: model.vae.decode(z.to(model.vae.dtype)).sample, latent)
    tape.segments.clear()
    return recorder.table()


def recipe_counts(recipe: str) -> dict[str, Any]:
    """Micro-steps, the share of stage-two micro-steps that run Eq. 7, and evaluation images."""
    from magicapture_pipeline.config.generation import GenerationConfig
    from magicapture_pipeline.config.recipes import official_recipe
    from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig

    one, two = StageOneConfig(), StageTwoConfig()
    if recipe == "official":
        one = StageOneConfig(**official_recipe(StageOneConfig))
        two = StageTwoConfig(**official_recipe(StageTwoConfig))
    weights = two.task_weights
    task_share = sum(
        w for w, task in zip(weights, ("source", "reference", "composed"), strict=True)
        if task in two.identity.tasks
    ) / sum(weights)  # fmt: skip
    ident = two.identity
    below = (
        1.0
        if ident.mode == "two_pass"
        else min(1.0, ident.threshold_fraction / two.max_timestep_fraction)
    )
    generation = GenerationConfig()
    images = len(generation.prompt_templates) * generation.images_per_prompt
    return {
        "stage_one_micro_steps": one.max_steps * one.gradient_accumulation_steps,
        "stage_two_micro_steps": two.max_steps * two.gradient_accumulation_steps,
        "eq7_share": task_share * below,
        "eq7_variant": "stage2_authors_step" if recipe == "official" else DEFAULT_STEP,
        "evaluation_images": images,
        "generation_steps": generation.num_inference_steps,
        "lora_preset": two.lora.preset,
    }


def customization(
    steps: dict[str, dict[str, Any]], gen: dict[str, Any], recipe: str
) -> dict[str, Any]:
    """FLOPs of a whole customization: stage one + stage two (Eq. 7 on its share) + images."""
    counts = recipe_counts(recipe)
    eq7 = steps[counts["eq7_variant"]]["total"]
    without = steps["stage2_eq8_step"]["total"]
    if recipe == "official":  # every layer's maps, per head, also when Eq. 7 does not run
        without = eq7 - (steps["stage2_eq8_eq7_two_pass_step"]["total"] - without)
    stage_two_step = counts["eq7_share"] * eq7 + (1 - counts["eq7_share"]) * without
    parts = {
        "stage_one": counts["stage_one_micro_steps"] * steps["stage1_step"]["total"],
        "stage_two": counts["stage_two_micro_steps"] * stage_two_step,
        "evaluation": counts["evaluation_images"] * gen["total"],
    }
    total = sum(parts.values())
    return {
        **counts,
        "flops": parts,
        "total_flops": total,
        "h100_floor_s": total / (H100_BF16_DENSE_TFLOPS * 1e12),
        "h100_s_at_35pct": total / (H100_BF16_DENSE_TFLOPS * 1e12 * UTILISATION),
    }


def measure(size: str, lora_preset: str = "paper") -> dict[str, Any]:
    """Every variant, one image, both recipes, for one size."""
    model = ms.build_meta_model(size, lora_preset)
    cache: dict[Any, _Counted] = {}
    steps = {name: count_step(model, name, cache) for name in VARIANTS}
    gen = count_generation(model)
    ratio = steps["stage2_authors_step"]["total"] / steps[DEFAULT_STEP]["total"]
    window = ms.face_window(model, MARGIN)
    from magicapture_pipeline.speed_bench.validation_cost import validation_cost

    custom = {r: customization(steps, gen, r) for r in ("paper", "official")}
    return {
        "validation": validation_cost(model, gen["total"], custom["paper"]),
        "resolution": model.size.resolution,
        "family": model.size.family,
        "steps": steps,
        "generation_one_image": gen,
        "face_window_latent": list(window),
        "customization": custom,
        "stage2_authors_over_default_flops": ratio,
        "stage2_authors_over_face_window_flops": steps["stage2_authors_step"]["total"]
        / steps["stage2_eq8_eq7_face_window_step"]["total"],
    }


def _tf(value: float) -> str:
    return f"{value / 1e12:.3f}"


def render(result: dict[str, Any]) -> str:
    """The markdown of ``bench_flops.json``."""
    lines = ["# Work per step at real size (TFLOP, counted on the meta device)", ""]
    lines.append(result["note"])
    for size, data in result["sizes"].items():
        lines += ["", f"## {size} ({data['family']}, {data['resolution']} px)", ""]
        lines.append("| step | total | fwd | bwd | text enc | UNet | VAE | identity |")
        lines.append("|---|---|---|---|---|---|---|---|")
        rows = {
            **data["steps"],
            "generation_one_image (50 steps, CFG, decode)": data["generation_one_image"],
        }
        for name, table in rows.items():
            by = table["by_component"]
            cells = [
                _tf(sum(by.get(c, {}).values()))
                for c in ("text_encoder", "unet", "vae", "identity")
            ]
            lines.append(
                f"| {name} | {_tf(table['total'])} | {_tf(table['forward'])} | "
                f"{_tf(table['backward'])} | " + " | ".join(cells) + " |"
            )
        lines += [
            "",
            f"stage2_authors_over_default_flops: "
            f"{data['stage2_authors_over_default_flops']:.3f}; authors over face-window: "
            f"{data['stage2_authors_over_face_window_flops']:.3f}",
            "",
        ]
        v = data["validation"]
        lines.append(
            f"One validation ({v['images']} images: 50 steps CFG + decode + ArcFace + CLIP "
            f"ViT-L/14 each): {_tf(v['validation_flops'])} TFLOP = "
            f"{v['validation_over_training']:.2f} x the stage-two work of "
            f"{v['steps_compared']} steps (every_n_steps = {v['every_n_steps']})."
        )
        lines.append("")
        lines.append(
            "| recipe | stage one | stage two | evaluation | total PFLOP | H100 floor s "
            "| H100 s at 35 % |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for recipe, c in data["customization"].items():
            f = c["flops"]
            lines.append(
                f"| {recipe} | {f['stage_one'] / 1e15:.1f} | {f['stage_two'] / 1e15:.1f} | "
                f"{f['evaluation'] / 1e15:.1f} | {c['total_flops'] / 1e15:.1f} | "
                f"{c['h100_floor_s']:.1f} | {c['h100_s_at_35pct']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/08_reporting", type=Path)
    parser.add_argument("--sizes", nargs="+", default=list(ms.REAL_SIZES))
    parser.add_argument(
        "--jobs", type=int, default=2, help="sizes counted at once, one process each (1 = serial)"
    )
    args = parser.parse_args(argv)
    from magicapture_pipeline.core.atomic import write_json, write_text  # noqa: PLC0415

    start = time.perf_counter()
    if args.jobs > 1 and len(args.sizes) > 1:  # the sizes share nothing: one process each
        import multiprocessing  # noqa: PLC0415

        with multiprocessing.get_context("fork").Pool(min(args.jobs, len(args.sizes))) as pool:
            sizes = dict(zip(args.sizes, pool.map(measure, args.sizes), strict=True))
    else:
        sizes = {size: measure(size) for size in args.sizes}
    result = {
        "note": "FLOPs = torch.utils.flop_counter.FlopCounterMode over one micro-batch (batch 1) "
        "on the meta device, random-init architectures of the published configs; matmul, conv "
        "and attention only (norms, activations and elementwise ops are not counted). "
        f"H100 floor = FLOPs / {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s (dense bf16); "
        f"at 35 % = floor / {UTILISATION}.",
        "sizes": sizes,
        "seconds": round(time.perf_counter() - start, 1),
    }

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_flops.json", result)
    write_text(args.out / "bench_flops.md", render(result))
    sys.stdout.write(render(result))
    return result


if __name__ == "__main__":
    main()
