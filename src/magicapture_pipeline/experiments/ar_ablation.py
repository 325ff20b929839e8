"""Attention refocusing (Eq. 8) ablation: how much of [V1]'s attention lies inside the face?

Trains stage one once, then stage two twice from the same embeddings, seed and steps, with the
attention refocusing loss on and off, on the tiny random SD and the demo photos (public-domain,
from installed packages, analysed by the project's own face pipeline). For each run it reports the
share of the [V1] cross-attention mass inside the face mask (the paper's claim: AR keeps [V1] on the
face and [V2] off it), measured at the AR layers on fixed noise, for

* ``source``: "a photo of a <v1> person" over the source photos;
* ``composed``: "a photo of a <v1> person in the <v2> style" over the reference images that have
  a face (plus [V2]'s share outside the face over all references).

Columns ``v1_in_face_*`` use the raw attention probabilities; ``v1_scaled_in_face_*`` the min-max
scaled maps that Eq. 8 penalises; ``eq8_loss_*`` is Eq. 8 itself on the same fixed inputs. A random
tiny model attends almost uniformly over the 77 text tokens, so its raw maps are nearly flat and
the raw share sits near the face's area share (printed below the table).

Rerun: ``python -m magicapture_pipeline.experiments.ar_ablation`` (about a minute per seed on 2
CPU cores; ``--help`` for steps, seeds and resolution; ``--out file.json`` keeps the numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.config.model import TinyModelConfig
from magicapture_pipeline.config.training import StageOneConfig, StageTwoConfig
from magicapture_pipeline.core.models.builders import build_tiny_sd
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import (
    StageTwoTrainer,
    TrainingExample,
    example_from_images,
    train_stage_one,
)


def demo_examples(resolution: int, sources: int, references: int) -> list[TrainingExample]:
    """The demo photos, cropped and masked by the preprocessing core (``core.faces``)."""
    from magicapture_pipeline.core.faces.analysis import analyze_reference, analyze_source
    from magicapture_pipeline.core.faces.detection import FaceAnalyzer
    from magicapture_pipeline.core.faces.sample_data import build_sample_set

    examples = []
    with FaceAnalyzer() as analyzer:
        for role, count, analyze in (
            ("source", sources, analyze_source),
            ("reference", references, analyze_reference),
        ):
            for sample in build_sample_set(role, count):
                result = analyze(sample.pixels, analyzer, resolution)
                examples.append(
                    example_from_images(
                        sample.file_name,
                        role,
                        Image.fromarray(result.crop),
                        Image.fromarray(result.latent_mask, mode="L"),
                        result.landmarks5,
                    )
                )
    return examples


def _stage_two(args: argparse.Namespace, seed: int, attention: bool) -> StageTwoConfig:
    return StageTwoConfig(
        seed=seed,
        max_steps=args.steps_two,
        gradient_accumulation_steps=args.accumulation,
        mixed_precision="no",
        learning_rate=args.lora_lr,
        embedding_learning_rate=args.embedding_lr,
        heatmap_every=0,
        identity=IdentityConfig(mode="off"),
        attention=AttentionConfig(enabled=attention, resolution=args.attention_resolution),
    )


def _measure(trainer: StageTwoTrainer) -> dict[str, float]:
    source = trainer.attention_report(role="source")
    composed = trainer.attention_report(role="reference")
    return {
        "v1_in_face_source": source["v1_mass_in_face"],
        "v1_in_face_composed": composed["v1_mass_in_face"],
        "v2_outside_face_composed": composed["v2_mass_outside_face"],
        "v1_scaled_in_face_source": source["v1_scaled_mass_in_face"],
        "v1_scaled_in_face_composed": composed["v1_scaled_mass_in_face"],
        "v1_peak_in_face_source": source["v1_peak_in_face"],
        "v1_peak_in_face_composed": composed["v1_peak_in_face"],
        "eq8_loss_source": source["attention_loss"],
        "eq8_loss_composed": composed["attention_loss"],
        "uniform_face_share_source": float(source["face_masks"].mean()),
    }


def run_seed(args: argparse.Namespace, model_dir: Path, examples, seed: int) -> dict[str, Any]:
    """Stage one, then stage two with AR on and with AR off, for one seed."""
    stage_one = StageOneConfig(
        seed=seed,
        max_steps=args.steps_one,
        gradient_accumulation_steps=args.accumulation,
        mixed_precision="no",
    )
    embeddings = train_stage_one(
        load_components(model_dir), examples, stage_one, progress=False
    ).embeddings
    row: dict[str, Any] = {"seed": seed}
    for label, attention in (("ar_on", True), ("ar_off", False)):
        trainer = StageTwoTrainer(
            load_components(model_dir), examples, _stage_two(args, seed, attention), embeddings
        )
        if label == "ar_on":
            row["before_stage_two"] = _measure(trainer)
        trainer.train(progress=False)
        row[label] = _measure(trainer)
        trainer.close()
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean (and population std) over seeds of every measurement, per condition."""
    summary: dict[str, dict[str, float]] = {}
    for condition in ("before_stage_two", "ar_off", "ar_on"):
        for key in rows[0][condition]:
            values = [r[condition][key] for r in rows if not math.isnan(r[condition][key])]
            if values:
                summary.setdefault(condition, {})[key] = statistics.fmean(values)
                summary[condition][f"{key}_std"] = statistics.pstdev(values)
    return summary


def _format(summary: dict[str, dict[str, float]]) -> str:
    keys = [
        "v1_in_face_source",
        "v1_in_face_composed",
        "v2_outside_face_composed",
        "v1_scaled_in_face_source",
        "v1_scaled_in_face_composed",
        "v1_peak_in_face_source",
        "v1_peak_in_face_composed",
        "eq8_loss_source",
        "eq8_loss_composed",
    ]
    lines = ["| condition | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for condition, values in summary.items():
        cells = [f"{values[k]:.3f} ± {values[k + '_std']:.3f}" for k in keys if k in values]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    uniform = summary["ar_on"]["uniform_face_share_source"]
    lines.append(f"\nface share of the map (a uniform [V1] map would score this): {uniform:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the ablation and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--sources", type=int, default=5)
    parser.add_argument("--references", type=int, default=5)
    parser.add_argument("--steps-one", type=int, default=60)
    parser.add_argument("--steps-two", type=int, default=80)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--embedding-lr", type=float, default=1e-4)
    parser.add_argument("--attention-resolution", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    examples = demo_examples(args.resolution, args.sources, args.references)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = build_tiny_sd(
            Path(folder) / "tiny_sd", TinyModelConfig(sample_size=args.resolution)
        )
        rows = [run_seed(args, model_dir, examples, seed) for seed in args.seeds]
    report = {"settings": vars(args) | {"out": str(args.out)}, "runs": rows,
              "summary": summarise(rows)}  # fmt: skip
    sys.stdout.write(_format(report["summary"]) + "\n")
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
