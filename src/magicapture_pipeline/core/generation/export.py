"""The exported concept: a folder stock diffusers can load (issue 3, section 4).

``<dir>/pytorch_lora_weights.safetensors`` (diffusers LoRA format, written by
``StableDiffusionPipeline.save_lora_weights``), one textual-inversion file per placeholder token
(``{token: (1, hidden)}`` safetensors, read by ``load_textual_inversion(file, token=token)``) and
``concept.json`` describing it. Only state dicts are written, never a pipeline with a peft adapter
attached (on reload its attention weights would be silently re-initialised).

SDXL concepts (``"family": "sdxl"`` in ``concept.json``) use the SDXL formats: the LoRA file is
written by ``StableDiffusionXLPipeline.save_lora_weights`` (UNet, and ``text_encoder`` /
``text_encoder_2`` when trained) and each token file holds both tables' rows,
``{"clip_l": (1, 768), "clip_g": (1, 1280)}`` (the layout of diffusers' SDXL pivotal-tuning
examples), loaded with one ``load_textual_inversion`` per encoder and its tokenizer.
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

from magicapture_pipeline.core import atomic

CONCEPT_JSON = "concept.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
FORMAT_VERSION = 1
SD15, SDXL = "sd15", "sdxl"  # the same names as core.models (kept import-free here)
SDXL_TABLES = ("clip_l", "clip_g")  # token-file keys: text_encoder, text_encoder_2


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


def _row(value: Tensor) -> Tensor:
    return value.detach().to("cpu", torch.float32).reshape(1, -1).contiguous()


def token_file_tensors(token: str, value: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """What one token file holds: ``{token: (1, d)}`` (SD 1.x) or ``{"clip_l": (1, d1),
    "clip_g": (1, d2)}`` (SDXL, ``value`` a ``{table: row}`` mapping)."""
    if not isinstance(value, Mapping):
        return {token: _row(value)}
    if set(value) != set(SDXL_TABLES):
        raise ValueError(
            f"SDXL embedding of {token!r} needs rows {SDXL_TABLES}, got {sorted(value)}"
        )
    return {name: _row(value[name]) for name in SDXL_TABLES}


def export(  # noqa: PLR0913 (one optional LoRA state dict per component)
    concept_dir: str | Path,
    embeddings: Mapping[str, Tensor | Mapping[str, Tensor]],
    unet_lora: Mapping[str, Tensor] | None,
    text_encoder_lora: Mapping[str, Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
    text_encoder_2_lora: Mapping[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Write the concept folder and return the ``concept.json`` content.

    The family is ``metadata["family"]`` (default ``sd15``); ``sdxl`` writes the SDXL formats.

    Args:
        concept_dir: target folder. The concept is written to a hidden sibling and swapped in
            whole (``core.atomic.staged_dir``): an earlier export stays intact until the new one
            is complete, and a failure (full disk, read-only folder) raises
            ``core.atomic.WriteFailed`` naming the folder.
        embeddings: ``{token: embedding}``, [V1] first; for SDXL ``{token: {"clip_l": row,
            "clip_g": row}}``.
        unet_lora: diffusers-format UNet LoRA state dict
            (``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))``), or ``None``
            for an embeddings-only concept (Textual Inversion): no LoRA file, ``"lora": null``.
        text_encoder_lora: the same for the (first) text encoder, or ``None``.
        metadata: extra fields for ``concept.json`` (``base_model``, ``family``, ``resolution``,
            ``preset``, ``identity_loss``, ...).
        text_encoder_2_lora: SDXL only: the same for ``text_encoder_2``, or ``None``.

    Returns:
        The ``concept.json`` dictionary.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    family = (metadata or {}).get("family") or SD15
    if family not in (SD15, SDXL):
        raise ValueError(f"metadata family {family!r}: expected {SD15!r} or {SDXL!r}")
    if text_encoder_2_lora and family != SDXL:
        raise ValueError("text_encoder_2_lora is SDXL's; this concept's family is sd15")
    with atomic.staged_dir(concept_dir) as folder:
        if unet_lora is not None:
            layers: dict[str, Any] = {
                "unet_lora_layers": dict(unet_lora),
                "text_encoder_lora_layers": dict(text_encoder_lora) if text_encoder_lora else None,
            }
            saver = StableDiffusionPipeline
            if family == SDXL:
                saver = StableDiffusionXLPipeline
                layers["text_encoder_2_lora_layers"] = (
                    dict(text_encoder_2_lora) if text_encoder_2_lora else None
                )
            saver.save_lora_weights(
                folder, weight_name=LORA_FILE, safe_serialization=True, **layers
            )
        tokens = []
        for index, (token, value) in enumerate(embeddings.items(), start=1):
            if isinstance(value, Mapping) != (family == SDXL):
                raise ValueError(
                    f"embedding of {token!r} does not fit family {family!r} (SDXL: one row per "
                    f"table {SDXL_TABLES}; SD 1.x: one row)"
                )
            name = token_filename(index, token)
            save_file(token_file_tensors(token, value), folder / name)
            tokens.append({"token": token, "file": name})
        info: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "base_model": None,
            "resolution": None,
            "preset": None,
            **dict(metadata or {}),
            "family": family,
            "tokens": tokens,
            "lora": LORA_FILE if unet_lora is not None else None,
            "text_encoder_lora": unet_lora is not None and bool(text_encoder_lora),
            "text_encoder_2_lora": unet_lora is not None and bool(text_encoder_2_lora),
            "commit": (metadata or {}).get("commit") or git_commit(Path(__file__).resolve().parent),
        }
        (folder / CONCEPT_JSON).write_text(json.dumps(info, indent=2, default=str))
    return info


def read_concept(concept_dir: str | Path) -> dict[str, Any]:
    """The ``concept.json`` of an exported concept."""
    return json.loads((Path(concept_dir) / CONCEPT_JSON).read_text())


def pipeline_family(pipe: Any) -> str:
    """``sdxl`` for a pipeline with a second text encoder, else ``sd15``."""
    return SDXL if getattr(pipe, "text_encoder_2", None) is not None else SD15


def load_embeddings(pipe: Any, concept_dir: str | Path, info: Mapping[str, Any]) -> None:
    """Load every token file of a concept with the stock ``load_textual_inversion``.

    SD 1.x: ``load_textual_inversion(file, token=token)``. SDXL: the file's ``clip_l`` row into
    ``text_encoder`` / ``tokenizer`` and its ``clip_g`` row into ``text_encoder_2`` /
    ``tokenizer_2`` (diffusers' documented SDXL recipe). First every text encoder of ``pipe`` is
    made to pool at end-of-text, as in training (``core.models.loading.pool_at_end_of_text``;
    ``concept.json`` ``text_pooling``).

    Raises:
        ValueError: the concept's family (``concept.json``) is not the pipeline's.
    """
    from safetensors.torch import load_file

    from magicapture_pipeline.core.models.loading import pool_at_end_of_text

    folder = Path(concept_dir)
    family = info.get("family") or SD15
    if family != pipeline_family(pipe):
        raise ValueError(
            f"{folder / CONCEPT_JSON}: family {family!r}, but the pipeline "
            f"({type(pipe).__name__}) is {pipeline_family(pipe)!r}: load the concept on a base "
            f"model of its family ({info.get('base_model')})"
        )
    for tokenizer, encoder in (
        (pipe.tokenizer, pipe.text_encoder),
        (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)),
    ):
        if encoder is not None:  # pooled output at end-of-text, as the concept was trained
            pool_at_end_of_text(tokenizer, encoder)
    for item in info["tokens"]:
        path = folder / item["file"]
        if family == SD15:
            pipe.load_textual_inversion(str(path), token=item["token"])
            continue
        state = load_file(str(path))
        for name, encoder, tokenizer in (
            ("clip_l", pipe.text_encoder, pipe.tokenizer),
            ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2),
        ):
            pipe.load_textual_inversion(
                state[name], token=item["token"], text_encoder=encoder, tokenizer=tokenizer
            )


def load_concept(pipe: Any, concept_dir: str | Path, lora_scale: float = 1.0) -> dict[str, Any]:
    """Load a concept into a diffusers SD / SDXL pipeline with the stock loaders only.

    ``load_textual_inversion`` per token (per encoder for SDXL, :func:`load_embeddings`), then
    ``load_lora_weights`` and, when ``lora_scale`` is not 1, ``fuse_lora``-free scaling through
    ``set_adapters``.

    Args:
        pipe: a ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` of the concept's base
            model.
        concept_dir: the exported folder.
        lora_scale: LoRA strength (1 = as trained).

    Returns:
        The ``concept.json`` dictionary.
    """
    folder = Path(concept_dir)
    info = read_concept(folder)
    load_embeddings(pipe, folder, info)
    if info.get("lora", LORA_FILE) is None:  # embeddings-only concept
        return info
    adapter = "magicapture"
    pipe.load_lora_weights(
        str(folder), weight_name=info.get("lora", LORA_FILE), adapter_name=adapter
    )
    if lora_scale != 1.0:
        pipe.set_adapters([adapter], adapter_weights=[lora_scale])
    return info
