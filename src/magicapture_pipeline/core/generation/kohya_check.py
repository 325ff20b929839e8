"""Does an export's single files give the diffusers folder's pixels? (``make export`` ``--verify``)

Loads the base model twice with stock diffusers: once with the diffusers folder
(:func:`.export.load_concept`), once with the kohya LoRA (``load_lora_weights``) and the web-UI
embedding files (``load_textual_inversion``; SDXL: ``clip_l`` / ``clip_g`` into each encoder,
both pooling at end-of-text), samples the card's prompt with the same seed, and reports the
largest pixel difference (and, for scale, the difference the concept makes against the plain
base model). The same recipe as ``tests/core/generation/test_kohya_roundtrip.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from magicapture_pipeline.core.generation.bundle import CARD
from magicapture_pipeline.core.generation.export import SDXL, load_concept, read_concept
from magicapture_pipeline.core.generation.kohya import EMBEDDINGS, ExportRefused


def card_front_matter(export_dir: str | Path) -> dict[str, Any]:
    """The YAML front matter of an export's ``README.md``."""
    text = (Path(export_dir) / CARD).read_text()
    return yaml.safe_load(text.split("---\n")[1])


def load_kohya_files(pipe: Any, export_dir: Path, front: dict[str, Any]) -> None:
    """The kohya LoRA and the embedding files of ``export_dir`` into ``pipe`` with diffusers'
    own single-file loaders, as a diffusers user of the web-UI files would."""
    from safetensors.torch import load_file

    from magicapture_pipeline.core.models.loading import pool_at_end_of_text

    magic = front["magicapture"]
    files = magic["files"]
    sdxl = magic["family"] == SDXL
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if sdxl:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    for tokenizer, encoder in encoders:  # the published configs pool at the largest id
        pool_at_end_of_text(tokenizer, encoder)
    if files["lora"]:
        pipe.load_lora_weights(str(export_dir / files["lora"]))
    for file in files["embeddings"]:
        trigger = Path(file).stem
        if not sdxl:
            pipe.load_textual_inversion(str(export_dir / file), token=trigger)
            continue
        rows = load_file(str(export_dir / file))
        for name, (tokenizer, encoder) in zip(("clip_l", "clip_g"), encoders, strict=True):
            pipe.load_textual_inversion(
                rows[name], token=trigger, text_encoder=encoder, tokenizer=tokenizer
            )


def _image(pipe: Any, prompt: str, steps: int, size: int, seed: int) -> Any:
    import torch

    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt, num_inference_steps=steps, height=size, width=size, output_type="np",
        generator=torch.Generator().manual_seed(seed),
    ).images[0]  # fmt: skip


def compare_exports(
    export_dir: str | Path,
    steps: int = 2,
    seed: int = 0,
    size: int | None = None,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Largest |pixel| difference (images in [0, 1]) between the kohya files and the diffusers
    folder of ``export_dir`` (a ``format: all`` export), float32 on CPU. A relative
    ``base_model`` (the demo's ``data/06_models/tiny_sd``) is read under ``root``.

    Returns ``{"max_abs_pixel_difference", "concept_effect" (max |concept - plain base|),
    "prompt", "steps", "size", "seed", "base_model"}``.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    export_dir = Path(export_dir)
    front = card_front_matter(export_dir)
    magic = front["magicapture"]
    if not all((export_dir / name).is_dir() for name in ("diffusers", EMBEDDINGS)):
        raise ExportRefused(f"{export_dir}: verifying needs a format 'all' export")
    info = read_concept(export_dir / "diffusers")
    cls = StableDiffusionXLPipeline if magic["family"] == SDXL else StableDiffusionPipeline
    base = info["base_model"]
    if root is not None and not Path(base).is_absolute() and (Path(root) / base).is_dir():
        base = str(Path(root) / base)
    size = size or int(info.get("resolution") or 64)
    template = magic["prompt_template"]
    tokens = list(magic["trigger_words"])
    triggers = [magic["trigger_words"][t] for t in tokens]

    def fresh() -> Any:
        return cls.from_pretrained(base, local_files_only=True)

    diffusers_pipe = fresh()
    load_concept(diffusers_pipe, export_dir / "diffusers")
    concept_prompt = template.format(v1=tokens[0], v2=tokens[1])
    expected = _image(diffusers_pipe, concept_prompt, steps, size, seed)
    kohya_pipe = fresh()
    load_kohya_files(kohya_pipe, export_dir, front)
    prompt = template.format(v1=triggers[0], v2=triggers[1])
    got = _image(kohya_pipe, prompt, steps, size, seed)
    plain = _image(fresh(), template.format(v1="", v2=""), steps, size, seed)
    return {
        "max_abs_pixel_difference": float(abs(got - expected).max()),
        "concept_effect": float(abs(expected - plain).max()),
        "prompt": prompt,
        "steps": steps,
        "size": size,
        "seed": seed,
        "base_model": str(base),
    }
