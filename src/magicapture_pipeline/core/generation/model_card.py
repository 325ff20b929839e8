"""The model card of an exported concept: ``README.md`` with Hugging Face model-card YAML front
matter (``base_model``, ``license``, ``tags``, ``instance_prompt``; the rest under
``magicapture:``) and a body a person reads before dropping the files into ComfyUI / A1111."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from magicapture_pipeline.config.adapters import LoraConfigModel
from magicapture_pipeline.config.generation import GenerationConfig, SamplingConfig
from magicapture_pipeline.config.training import StageTwoConfig

# Licences of the base models this project documents (their model cards' `license:` field).
LICENCES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
}
# The web UIs' names of our schedulers (A1111 sampler list, ComfyUI KSampler sampler_name).
SAMPLERS = {
    "euler_ancestral": ("Euler a", "euler_ancestral"),
    "dpm": ("DPM++ 2M", "dpmpp_2m"),
    "kdpm": ("DPM2", "dpm_2"),
    "ddim": ("DDIM", "ddim"),
    "pndm": ("PLMS", "ipndm"),
}


def _help(model: type, name: str) -> str:
    return model.model_fields[name].description or "ours"


def licence(base_model: str | None) -> dict[str, str]:
    """HF ``license`` fields of the base model: known id -> its licence, else ``other``."""
    text = str(base_model or "")
    for model_id, name in LICENCES.items():
        if text == model_id or text.rstrip("/").endswith(model_id.split("/")[-1]):
            return {"license": name}
    if "tiny_sd" in text:
        return {"license": "other", "license_name": "random-weights-demo"}
    return {"license": "other", "license_name": "unknown-check-the-base-model"}


# Numbers in metrics.json that describe the run, not a mean over images (core/evaluation/
# scoring.py): how many photos were held out, whether Eq. 7 was trained (1 / 0).
RUN_FACTS = ("heldout_photos", "identity_loss_trained")
# Companions of a mean (core/evaluation/stats.py and metrics.py): its n, standard error, faces.
COMPANIONS = ("_n", "_se", "_faces")


def evaluation_figures(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Each numeric metric with the n it averages and its standard error (``<name>_n`` /
    ``<name>_se`` when the evaluation recorded them, e.g. CSIM over the faces found; else the
    image count of its set); run facts apart, without an n; unavailable ones with why."""
    if not metrics:
        return {"available": False, "reason": "no metrics.json found beside the concept"}
    numbers = {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    figures: dict[str, Any] = {}
    facts: dict[str, float] = {}
    for key, value in numbers.items():
        if key.endswith("n_images"):
            continue
        if any(key.endswith(end) and key[: -len(end)] in numbers for end in COMPANIONS):
            continue
        if key.removeprefix("postprocessed_") in RUN_FACTS:
            facts[key] = value
            continue
        n_key = "postprocessed_n_images" if key.startswith("postprocessed_") else "n_images"
        n = numbers.get(f"{key}_n", numbers.get(n_key, 0))
        figure: dict[str, Any] = {"value": value, "n": int(n)}
        if f"{key}_se" in numbers:
            figure["se"] = numbers[f"{key}_se"]
        figures[key] = figure
    return {"figures": figures, "run": facts, "unavailable": dict(metrics.get("unavailable") or {})}


def recipe(info: Mapping[str, Any]) -> dict[str, Any]:
    """The training recipe recorded in ``concept.json``, each value with its source label (the
    help of the config field that sets it)."""
    items = {
        "preset": (info.get("preset"), _help(LoraConfigModel, "preset")),
        "lora_rank": (info.get("lora_rank"), _help(LoraConfigModel, "rank")),
        "lora_alpha": (info.get("lora_alpha"), _help(LoraConfigModel, "alpha")),
        "steps": (info.get("steps"), _help(StageTwoConfig, "max_steps")),
        "seed": (info.get("seed"), _help(StageTwoConfig, "seed")),
        "identity_loss": (info.get("identity_loss"), _help(StageTwoConfig, "identity")),
        "attention_refocusing": (
            info.get("attention_refocusing"),
            _help(StageTwoConfig, "attention"),
        ),  # fmt: skip
        "resolution": (info.get("resolution"), "the training crops' size (globals.resolution)"),
    }
    return {k: {"value": v, "source": s} for k, (v, s) in items.items()}


def kohya_rows(written: Mapping[str, Any]) -> list[str]:
    """The card's table rows of the single files."""
    rows = [
        f"| `{e['file']}` | ComfyUI `models/embeddings/`, A1111 / Forge `embeddings/` |"
        for e in written["embeddings"]
    ]
    if written["lora"]:
        where = "ComfyUI `models/loras/`, A1111 / Forge `models/Lora/`"
        rows.append(f"| `{written['lora']}` | {where} |")
    return rows


def card(  # noqa: PLR0913 (one argument per part of the card)
    concept: str,
    info: Mapping[str, Any],
    written: Mapping[str, Any],
    sampling: SamplingConfig | None = None,
    metrics: Mapping[str, Any] | None = None,
    template: str | None = None,
) -> str:
    """The ``README.md`` text. ``written`` is what :func:`.kohya.write_kohya` wrote."""
    sampling = sampling or SamplingConfig()
    template = template or GenerationConfig().prompt_templates[0]
    triggers = {e["token"]: e["trigger"] for e in written["embeddings"]}
    order = list(triggers.values()) + ["", ""]
    prompt = template.format(v1=order[0], v2=order[1])
    has_te = bool(info.get("text_encoder_lora") or info.get("text_encoder_2_lora"))
    unet_strength = sampling.lora_scale_unet
    te_strength = sampling.lora_scale_text_encoder if has_te else None
    a1111, comfy = SAMPLERS[sampling.scheduler]
    family = written["family"]
    meta: dict[str, Any] = {
        "base_model": str(info.get("base_model")),
        **licence(info.get("base_model")),
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": [
            "text-to-image",
            "lora",
            "textual-inversion",
            "magicapture",
            "stable-diffusion-xl" if family == "sdxl" else "stable-diffusion",
        ],  # fmt: skip
        "instance_prompt": prompt,
        **(
            {"widget": [{"text": prompt, "output": {"url": written["grid"]}}]}
            if written.get("grid")
            else {}
        ),  # fmt: skip
        "magicapture": {
            "concept": concept,
            "family": family,
            "trigger_words": triggers,
            "prompt_template": template,
            "lora_strength": {
                "unet": {
                    "value": unet_strength,
                    "source": _help(SamplingConfig, "lora_scale_unet"),
                },
                "text_encoder": {
                    "value": te_strength,
                    "source": _help(SamplingConfig, "lora_scale_text_encoder")
                    if has_te
                    else f"no text-encoder LoRA in this concept (preset {info.get('preset')!r})",
                },
            },
            "sampler": {
                "value": sampling.scheduler,
                "automatic1111": a1111,
                "comfyui": comfy,
                "source": _help(SamplingConfig, "scheduler"),
            },  # fmt: skip
            "steps": {
                "value": sampling.num_inference_steps,
                "source": _help(SamplingConfig, "num_inference_steps"),
            },  # fmt: skip
            "cfg": {
                "value": sampling.guidance_scale,
                "source": _help(SamplingConfig, "guidance_scale"),
            },  # fmt: skip
            "resolution": info.get("resolution"),
            "files": {
                "lora": written["lora"],
                "embeddings": [e["file"] for e in written["embeddings"]],
                "diffusers": None if written.get("format") == "kohya" else "diffusers/",
            },
            "source": written.get("source"),
            "sample_grid": (
                {"file": written["grid"], "origin": written.get("grid_origin")}
                if written.get("grid")
                else None
            ),  # fmt: skip
            "evaluation": evaluation_figures(metrics),
            "recipe": recipe(info),
            "commit": info.get("commit"),
        },
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    lora_tag = f"<lora:{concept}:{unet_strength}>" if written["lora"] else "(no LoRA)"
    lines = [
        "---", front.rstrip(), "---", "",
        f"# {concept}: a MagiCapture concept ({family})", "",
        f"Prompt: `{prompt}`. Trigger words: "
        + ", ".join(f"`{t}` ({tok})" for tok, t in triggers.items()) + ".", "",
        "| file | where it goes |", "|---|---|",
        *(kohya_rows(written) if written.get("format") != "diffusers" else []),
        *(["| `diffusers/` | `pipe.load_lora_weights` + `pipe.load_textual_inversion` |"]
          if written.get("format") != "kohya" else []), "",
        f"AUTOMATIC1111 / Forge: `{prompt} {lora_tag}`, sampler {a1111}, "
        f"{sampling.num_inference_steps} steps, CFG {sampling.guidance_scale}. ComfyUI: "
        f"LoraLoader strength_model {unet_strength}, strength_clip {te_strength or 0}, "
        f"KSampler `{comfy}`; type the trigger words as `embedding:<trigger>`.", "",
        *([f"![samples: {prompt}]({written['grid']})", "",
           f"Samples: {written.get('grid_origin') or written['grid']}.", ""]
          if written.get("grid") else []),
        "Strength 1.0 is the LoRA as trained; the recommended strengths are the official "
        "inference scales. Evaluation figures, the recipe and every value's source are in the "
        "front matter above.", "",
    ]  # fmt: skip
    return "\n".join(lines)
