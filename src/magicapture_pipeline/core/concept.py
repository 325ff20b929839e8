"""The exported concept: a folder stock diffusers can load (issue 3, section 4).

``<dir>/pytorch_lora_weights.safetensors`` (diffusers LoRA format, written by
``StableDiffusionPipeline.save_lora_weights``), one textual-inversion file per placeholder token
(``{token: (1, hidden)}`` safetensors, read by ``load_textual_inversion(file, token=token)``) and
``concept.json`` describing it. Only state dicts are written, never a pipeline with a peft adapter
attached (on reload its attention weights would be silently re-initialised).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

CONCEPT_JSON = "concept.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
FORMAT_VERSION = 1


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of ``cwd`` (or the working directory), ``"unknown"`` if none."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def token_filename(index: int, token: str) -> str:
    """A file name for a placeholder token, e.g. ``token_1_v1.safetensors`` for ``<v1>``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", token).strip("_") or "token"
    return f"token_{index}_{slug}.safetensors"


def export(
    concept_dir: str | Path,
    embeddings: Mapping[str, Tensor],
    unet_lora: Mapping[str, Tensor] | None,
    text_encoder_lora: Mapping[str, Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the concept folder and return the ``concept.json`` content.

    Args:
        concept_dir: target folder (created; files of an earlier export are overwritten).
        embeddings: ``{token: embedding}``, [V1] first.
        unet_lora: diffusers-format UNet LoRA state dict
            (``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))``), or ``None``
            for an embeddings-only concept (Textual Inversion): no LoRA file, ``"lora": null``.
        text_encoder_lora: the same for the text encoder, or ``None``.
        metadata: extra fields for ``concept.json`` (``base_model``, ``resolution``, ``preset``,
            ``identity_loss``, ...).

    Returns:
        The ``concept.json`` dictionary.
    """
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    folder = Path(concept_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if unet_lora is not None:
        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=dict(unet_lora),
            text_encoder_lora_layers=dict(text_encoder_lora) if text_encoder_lora else None,
            weight_name=LORA_FILE,
            safe_serialization=True,
        )
    tokens = []
    for index, (token, value) in enumerate(embeddings.items(), start=1):
        name = token_filename(index, token)
        vector = value.detach().to("cpu", torch.float32).reshape(1, -1).contiguous()
        save_file({token: vector}, folder / name)
        tokens.append({"token": token, "file": name})
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "base_model": None,
        "resolution": None,
        "preset": None,
        **dict(metadata or {}),
        "tokens": tokens,
        "lora": LORA_FILE if unet_lora is not None else None,
        "text_encoder_lora": unet_lora is not None and bool(text_encoder_lora),
        "commit": (metadata or {}).get("commit") or git_commit(Path(__file__).resolve().parent),
    }
    (folder / CONCEPT_JSON).write_text(json.dumps(info, indent=2, default=str))
    return info


def read_concept(concept_dir: str | Path) -> dict[str, Any]:
    """The ``concept.json`` of an exported concept."""
    return json.loads((Path(concept_dir) / CONCEPT_JSON).read_text())


def load_concept(pipe: Any, concept_dir: str | Path, lora_scale: float = 1.0) -> dict[str, Any]:
    """Load a concept into a diffusers SD pipeline with the stock loaders only.

    ``load_textual_inversion(file, token=token)`` per token, then ``load_lora_weights`` and, when
    ``lora_scale`` is not 1, ``fuse_lora``-free scaling through ``set_adapters``.

    Args:
        pipe: a ``StableDiffusionPipeline`` of the concept's base model.
        concept_dir: the exported folder.
        lora_scale: LoRA strength (1 = as trained).

    Returns:
        The ``concept.json`` dictionary.
    """
    folder = Path(concept_dir)
    info = read_concept(folder)
    for item in info["tokens"]:
        pipe.load_textual_inversion(str(folder / item["file"]), token=item["token"])
    if info.get("lora", LORA_FILE) is None:  # embeddings-only concept
        return info
    adapter = "magicapture"
    pipe.load_lora_weights(
        str(folder), weight_name=info.get("lora", LORA_FILE), adapter_name=adapter
    )
    if lora_scale != 1.0:
        pipe.set_adapters([adapter], adapter_weights=[lora_scale])
    return info
