"""Sampling with a trained concept: composed prompts, seeds, records and a contact sheet.

The base model loads with ``StableDiffusionPipeline.from_pretrained`` (a folder or a hub id) and the
concept with the loaders a user would call on any diffusers pipeline: ``load_textual_inversion``
per placeholder token and ``load_lora_weights``, then ``set_adapters`` with the official LoRA
scales (UNet 0.6, text encoder 0.9; junhahyung/MagiCapture ``inference_magicapture.py``, which also
samples with Euler-ancestral, 50 steps, guidance 7.0).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from magicapture_pipeline.core.generation.export import LORA_FILE, load_embeddings, read_concept

logger = logging.getLogger(__name__)

CONCEPT_ADAPTER = "magicapture"

SCHEDULERS = {
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "kdpm": "KDPM2AncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------- prompts


def compose_prompts(templates: list[str], v1: str, v2: str) -> list[str]:
    """Fill ``{v1}`` (person token) and ``{v2}`` (style token) in each template, keeping order.

    Duplicates are dropped; a template without placeholders is kept verbatim.
    """
    prompts = [t.format(v1=v1, v2=v2) for t in templates]
    return list(dict.fromkeys(prompts))


# --------------------------------------------------------------------------- loading


def concept_tokens(concept: dict[str, Any]) -> tuple[str, str]:
    """The person ([V1]) and style ([V2]) token strings of a concept, in that order.

    ``tokens`` entries may carry a ``role`` ("person"/"source" vs "style"/"reference"); without
    roles the first token is the person and the second the style (the export order).
    """
    tokens = concept.get("tokens", [])
    if len(tokens) < 2:
        raise ValueError(
            f"concept.json lists {len(tokens)} tokens; MagiCapture needs [V1] and [V2]"
        )
    by_role = {t.get("role"): t["token"] for t in tokens if t.get("role")}
    person = by_role.get("person") or by_role.get("source") or tokens[0]["token"]
    style = by_role.get("style") or by_role.get("reference") or tokens[1]["token"]
    return person, style


def load_base_pipeline(
    path_or_hub_id: str | Path, device: str = "cpu", dtype: str = "float32"
) -> Any:
    """The family's pipeline (``core.models.model_family``) with ``from_pretrained``
    (``device`` / ``dtype`` ``auto``: CUDA and float16 when present, see ``core.devices``):
    ``StableDiffusionPipeline`` without the safety checker, or ``StableDiffusionXLPipeline``
    (whose VAE decodes in fp32 even when ``dtype`` is float16: its ``force_upcast``). Every
    text encoder pools at end-of-text (``core.models.loading.pool_at_end_of_text``).

    A local folder is read with ``local_files_only=True``; a hub id goes through the HF cache.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from magicapture_pipeline.core.models.devices import resolve_device, resolve_dtype
    from magicapture_pipeline.core.models.loading import SDXL, model_family, pool_at_end_of_text

    dtype, device = resolve_dtype(dtype, device), resolve_device(device)
    source = str(path_or_hub_id)
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "local_files_only": Path(source).is_dir()}
    if model_family(source) == SDXL:
        pipe = StableDiffusionXLPipeline.from_pretrained(source, **kwargs)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, safety_checker=None, requires_safety_checker=False, **kwargs
        )
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), _second_encoder(pipe)):
        if encoder is not None:  # pooled output at end-of-text, as in training
            pool_at_end_of_text(tokenizer, encoder)
    return pipe.to(device)


def _second_encoder(pipe: Any) -> tuple[Any, Any]:
    """SDXL's ``(tokenizer_2, text_encoder_2)``; ``(None, None)`` for SD 1.x."""
    return getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)


def set_scheduler(pipe: Any, name: str) -> None:
    """Replace ``pipe.scheduler`` by the named sampler built from the model's scheduler config."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def attach_concept(
    pipe: Any,
    concept_dir: str | Path,
    lora_scale_unet: float = 0.6,
    lora_scale_text_encoder: float = 0.9,
) -> dict[str, Any]:
    """Load an exported concept onto ``pipe`` through diffusers' stock loaders.

    Every token's embedding goes through ``load_textual_inversion`` (per encoder for SDXL,
    ``core.concept.load_embeddings``); the LoRA (UNet and, when present, the text encoders)
    through ``load_lora_weights`` as adapter ``magicapture``, then ``set_adapters`` applies the
    per-component scales (both SDXL text encoders get the text-encoder scale).

    Returns:
        The concept's ``concept.json``.
    """
    concept_dir = Path(concept_dir)
    concept = read_concept(concept_dir)
    load_embeddings(pipe, concept_dir, concept)
    lora_name = concept.get("lora", LORA_FILE)  # None for an embeddings-only concept
    if lora_name and (concept_dir / lora_name).is_file():
        pipe.load_lora_weights(
            str(concept_dir), weight_name=lora_name, adapter_name=CONCEPT_ADAPTER
        )
        present = {name for name, adapters in pipe.get_list_adapters().items() if adapters}
        weights = {
            "unet": lora_scale_unet,
            "text_encoder": lora_scale_text_encoder,
            "text_encoder_2": lora_scale_text_encoder,
        }
        pipe.set_adapters(CONCEPT_ADAPTER, {k: v for k, v in weights.items() if k in present})
    else:
        logger.warning("Concept %s has no LoRA file: embeddings only", concept_dir)
    return concept


# --------------------------------------------------------------------------- sampling


@dataclass
class GeneratedImage:
    """One sample and everything needed to reproduce it."""

    key: str
    image: Image.Image
    prompt: str
    template: str
    prompt_index: int
    sample_index: int
    seed: int
    seconds: float

    def record(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The row of ``generation_records`` (image excluded)."""
        row = {k: v for k, v in asdict(self).items() if k != "image"}
        row.update(settings)
        return row


def sample_image(
    pipe: Any,
    prompt: str,
    *,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    negative_prompt: str = "",
) -> Image.Image:
    """One image from ``pipe`` (made by :func:`prepare_pipeline`) with its own seeded generator.

    The one sampling call of the project: ``generate``, the batch pipeline and the registered
    MLflow model all draw through it, so the same seed and settings give the same pixels.
    """
    with torch.no_grad():
        return pipe(
            prompt,
            negative_prompt=negative_prompt or None,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=resolution,
            width=resolution,
            generator=torch.Generator(device="cpu").manual_seed(seed),
        ).images[0]


def generate_images(
    pipe: Any,
    prompts: list[tuple[str, str]],
    *,
    images_per_prompt: int,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    negative_prompt: str = "",
    progress: bool = True,
) -> list[GeneratedImage]:
    """Sample ``images_per_prompt`` images for each ``(template, prompt)``; image i gets seed + i.

    Each image is sampled alone with its own CPU ``torch.Generator``, so any single image can be
    reproduced from its recorded seed.
    """
    from tqdm.auto import tqdm

    pipe.set_progress_bar_config(disable=True)
    jobs = [(p, j) for p in range(len(prompts)) for j in range(images_per_prompt)]
    results: list[GeneratedImage] = []
    for index, (p, j) in enumerate(tqdm(jobs, desc="generate", disable=not progress)):
        template, prompt = prompts[p]
        image_seed = seed + index
        start = time.perf_counter()
        image = sample_image(
            pipe,
            prompt,
            seed=image_seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            resolution=resolution,
            negative_prompt=negative_prompt,
        )
        results.append(
            GeneratedImage(
                key=f"p{p:02d}_s{j:03d}",
                image=image,
                prompt=prompt,
                template=template,
                prompt_index=p,
                sample_index=j,
                seed=image_seed,
                seconds=round(time.perf_counter() - start, 4),
            )
        )
    return results


# --------------------------------------------------------------------------- contact sheet


def make_grid(
    images: list[Image.Image],
    labels: list[str] | None = None,
    columns: int = 4,
    cell: int | None = None,
    label_height: int = 14,
) -> Image.Image:
    """A contact sheet: images in rows of ``columns`` with a caption strip under each.

    Args:
        images: the pictures (resized to ``cell`` x ``cell``; default the first image's width).
        labels: one caption per image (clipped to the cell width), or None for no captions.
        columns: images per row.
        cell: side of each cell in pixels.
        label_height: caption strip height in pixels (0 when ``labels`` is None).
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    cell = cell or images[0].width
    strip = label_height if labels is not None else 0
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + strip)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        x, y = (i % columns) * cell, (i // columns) * (cell + strip)
        sheet.paste(image.convert("RGB").resize((cell, cell)), (x, y))
        if labels is not None:
            text = labels[i]
            while text and draw.textlength(text) > cell - 2:
                text = text[:-1]
            draw.text((x + 1, y + cell + 1), text, fill="black")
    return sheet


# --------------------------------------------------------------------------- one call


@dataclass
class GenerationRun:
    """What one call of :func:`run_generation` produced."""

    images: list[GeneratedImage]
    settings: dict[str, Any]
    concept: dict[str, Any]


def prepare_pipeline(
    base_model: str | Path, concept_dir: str | Path, sampling: Any
) -> tuple[Any, dict[str, Any]]:
    """Base model + concept + scheduler as ``sampling`` (a ``SamplingConfig``) says.

    Returns:
        The ready pipeline (progress bar off) and the concept's ``concept.json``.
    """
    pipe = load_base_pipeline(base_model, sampling.device, sampling.dtype)
    concept = attach_concept(
        pipe, concept_dir, sampling.lora_scale_unet, sampling.lora_scale_text_encoder
    )
    set_scheduler(pipe, sampling.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe, concept


def sampling_settings(base_model: str | Path, sampling: Any, pipe: Any) -> dict[str, Any]:
    """The settings recorded beside every image (records CSV, provenance chunk), with the dtype
    and device ``pipe`` actually runs in (``auto`` resolved)."""
    return {
        "base_model": str(base_model),
        "scheduler": sampling.scheduler,
        "num_inference_steps": sampling.num_inference_steps,
        "guidance_scale": sampling.guidance_scale,
        "lora_scale_unet": sampling.lora_scale_unet,
        "lora_scale_text_encoder": sampling.lora_scale_text_encoder,
        "resolution": sampling.resolution,
        "negative_prompt": sampling.negative_prompt,
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "device": str(pipe.device),
    }


def run_generation(base_model: str | Path, concept_dir: str | Path, config: Any) -> GenerationRun:
    """Load base model + concept, compose the prompts and sample (a ``GenerationConfig``)."""
    pipe, concept = prepare_pipeline(base_model, concept_dir, config)
    v1, v2 = concept_tokens(concept)
    templates = list(dict.fromkeys([*config.prompt_templates, *config.extra_prompts]))
    prompts = [(t, t.format(v1=v1, v2=v2)) for t in templates]
    images = generate_images(
        pipe,
        prompts,
        images_per_prompt=config.images_per_prompt,
        seed=config.seed,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        resolution=config.resolution,
        negative_prompt=config.negative_prompt,
    )
    return GenerationRun(images, sampling_settings(base_model, config, pipe), concept)
