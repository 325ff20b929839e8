"""A concept as the single files ComfyUI, AUTOMATIC1111 and Forge load (issue 22).

From the diffusers-format concept folder (:mod:`.export`) this writes

- ``loras/<concept>.safetensors``: the LoRA in kohya's format, one module per key prefix,
  ``<name>.lora_down.weight`` (rank x in), ``<name>.lora_up.weight`` (out x rank) and
  ``<name>.alpha``. The trained alpha / rank is already folded into the up matrices of the
  diffusers export (``StageTwoTrainer.result``), so ``alpha`` = rank here and strength 1.0 in
  those tools is the trained LoRA (kohya's ``networks/lora.py`` ``LoRAModule``:
  ``scale = alpha / lora_dim``).
- ``embeddings/<trigger>.safetensors``, one per placeholder token, named by its trigger word
  (those tools take the file name as the word to type): SD 1.x ``{"emb_params": (1, 768)}``
  (AUTOMATIC1111's safetensors embedding), SDXL ``{"clip_l": (1, 768), "clip_g": (1, 1280)}``.

Module names (how the tools name them; checked against their loaders):

- UNet: ``lora_unet_`` + the diffusers module path with ``.`` -> ``_`` (e.g.
  ``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0``) for SD 1.x and
  SDXL alike: diffusers' ``convert_state_dict_to_kohya`` (diffusers/utils/state_dict_utils.py)
  writes these, ComfyUI's comfy/lora.py ``model_lora_keys_unet`` maps ``lora_unet_<diffusers
  name>`` for every UNet through ``unet_to_diffusers``, and kohya's networks/lora.py
  ``convert_diffusers_to_sai_if_needed`` maps them to SDXL's SGM blocks on load.
- Text encoders: kohya's networks/lora.py ``LORA_PREFIX_TEXT_ENCODER = "lora_te"`` (one encoder,
  SD 1.x) and ``LORA_PREFIX_TEXT_ENCODER1/2 = "lora_te1"/"lora_te2"`` (SDXL), followed by the
  transformers module path as transformers 4 named it
  (``text_model_encoder_layers_0_self_attn_q_proj``: transformers 5's ``CLIPTextModel`` has no
  ``text_model`` level, so its ``encoder.layers...`` paths get the level back). SDXL's second
  encoder is OpenCLIP ViT-bigG, whose original checkpoint fuses q/k/v into ``in_proj``; the LoRA
  names stay the split transformers ones (``q_proj``/``k_proj``/``v_proj``/``out_proj``), as
  ComfyUI's comfy/lora.py ``model_lora_keys_clip`` (``LORA_CLIP_MAP``, "lora_te2_... #SDXL
  base") and kohya (which trains on transformers' ``CLIPTextModelWithProjection``) name them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from magicapture_pipeline.core.generation.export import (
    CONCEPT_JSON,
    LORA_FILE,
    SD15,
    SDXL,
    SDXL_TABLES,
)

LORAS, EMBEDDINGS = "loras", "embeddings"
SD15_EMBEDDING_KEY = "emb_params"  # AUTOMATIC1111's single-tensor embedding key
TEXT_PREFIXES = {
    SD15: {"text_encoder": "lora_te"},
    SDXL: {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
}
UNET_PREFIX = "lora_unet"
# diffusers-format LoRA key endings -> kohya's (down = A = rank x in, up = B = out x rank)
_ENDINGS = {
    ".lora.down.weight": "lora_down",
    ".lora.up.weight": "lora_up",
    ".lora_A.weight": "lora_down",
    ".lora_B.weight": "lora_up",
    ".lora_linear_layer.down.weight": "lora_down",
    ".lora_linear_layer.up.weight": "lora_up",
}
# safetensors header metadata kohya-trained files carry (read for display by the web UIs)
BASE_VERSION = {SD15: "sd_v1", SDXL: "sdxl_base_v1-0"}
ARCHITECTURE = {SD15: "stable-diffusion-v1/lora", SDXL: "stable-diffusion-xl-v1-base/lora"}


class ExportRefused(ValueError):
    """A concept that cannot be exported: the message names the file or field and the rule."""


def concept_family(info: Mapping[str, Any], where: str | Path) -> str:
    """The concept's family from ``concept.json``; refused when absent or unknown."""
    family = info.get("family")
    if family not in (SD15, SDXL):
        got = "missing" if family is None else repr(family)
        raise ExportRefused(
            f"{where}: field 'family' is {got}; a single-file export needs the base model's "
            f"family, one of {SD15!r}, {SDXL!r} (re-export the concept with this version)"
        )
    return family


def kohya_module_name(component: str, module: str, family: str) -> str:
    """The kohya name of one LoRA module: ``component`` is ``unet``, ``text_encoder`` or
    ``text_encoder_2``; ``module`` its diffusers / transformers module path."""
    if component == "unet":
        prefix = UNET_PREFIX
    else:
        prefixes = TEXT_PREFIXES[family]
        if component not in prefixes:
            raise ExportRefused(f"a {family} concept has no component {component!r}")
        prefix = prefixes[component]
        if not module.startswith("text_model."):  # transformers >= 5 dropped this level
            module = f"text_model.{module}"
    return f"{prefix}_{module.replace('.', '_')}"


def _split_key(key: str) -> tuple[str, str, str]:
    """``(component, module path, lora_down | lora_up)`` of a diffusers-format LoRA key."""
    component, _, rest = key.partition(".")
    for ending, kind in _ENDINGS.items():
        if rest.endswith(ending):
            return component, rest[: -len(ending)], kind
    raise ExportRefused(
        f"LoRA key {key!r}: not a diffusers-format LoRA weight (expected one of "
        f"{sorted(_ENDINGS)} after the component)"
    )


def to_kohya(state: Mapping[str, Tensor], family: str) -> dict[str, Tensor]:
    """A diffusers-format LoRA state dict (``unet.`` / ``text_encoder.`` / ``text_encoder_2.``
    prefixes) in kohya's format, ``alpha`` = rank (the scale is folded in already)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        component, module, kind = _split_key(key)
        if component not in ("unet", *TEXT_PREFIXES[family]):
            raise ExportRefused(f"LoRA key {key!r}: unknown component {component!r} for {family}")
        name = kohya_module_name(component, module, family)
        out[f"{name}.{kind}.weight"] = value.detach().to("cpu").contiguous()
    for key in [k for k in out if k.endswith(".lora_down.weight")]:
        name = key.removesuffix(".lora_down.weight")
        if f"{name}.lora_up.weight" not in out:
            raise ExportRefused(f"LoRA module {name}: lora_down without lora_up")
        out[f"{name}.alpha"] = torch.tensor(float(out[key].shape[0]))
    if any(f"{k.removesuffix('.lora_up.weight')}.alpha" not in out for k in out if "lora_up" in k):
        raise ExportRefused("LoRA state: a lora_up without its lora_down")
    return out


def trigger_word(concept: str, token: str) -> str:
    """The word to type for a placeholder token, also its embedding file's name:
    ``<concept>_<token without brackets>`` in lower case, e.g. ``alice_v1`` for ``<v1>``."""
    slug = re.sub(r"[^a-z0-9]+", "_", token.lower()).strip("_") or "token"
    return f"{concept}_{slug}".lower()


def embedding_tensors(state: Mapping[str, Tensor], family: str, where: Path) -> dict[str, Tensor]:
    """One token file of the diffusers export in the web UIs' format."""
    if family == SDXL:
        missing = [name for name in SDXL_TABLES if name not in state]
        if missing:
            raise ExportRefused(f"{where}: SDXL token file lacks {missing} (needs {SDXL_TABLES})")
        return {name: state[name].reshape(1, -1).contiguous() for name in SDXL_TABLES}
    if len(state) != 1:
        raise ExportRefused(f"{where}: an SD 1.x token file holds one row, got {sorted(state)}")
    return {SD15_EMBEDDING_KEY: next(iter(state.values())).reshape(1, -1).contiguous()}


def _metadata(info: Mapping[str, Any], family: str, concept: str, triggers: list[str]) -> dict:
    rank = info.get("lora_rank")
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),  # alpha / rank folded into lora_up: alpha = rank
        "ss_base_model_version": BASE_VERSION[family],
        "ss_training_comment": f"MagiCapture concept {concept}; trained lora_alpha "
        f"{info.get('lora_alpha')} folded into lora_up",
        "modelspec.architecture": ARCHITECTURE[family],
        "modelspec.title": concept,
        "modelspec.trigger_phrase": ", ".join(triggers),
    }


def write_kohya(concept_dir: Path, folder: Path, concept: str) -> dict[str, Any]:
    """Write the kohya LoRA and the embeddings of ``concept_dir`` under ``folder`` (a staging
    folder the caller swaps in). Returns what was written: ``lora`` (relative path or None),
    ``embeddings`` ``[{token, trigger, file}]``, ``family``."""
    from safetensors.torch import load_file, save_file

    info_path = concept_dir / CONCEPT_JSON
    if not info_path.is_file():
        raise ExportRefused(f"{info_path}: missing; not an exported concept folder")
    info = json.loads(info_path.read_text())
    family = concept_family(info, info_path)
    if not info.get("tokens"):
        raise ExportRefused(f"{info_path}: field 'tokens' is empty or missing")
    (folder / EMBEDDINGS).mkdir(parents=True, exist_ok=True)
    embeddings = []
    for item in info["tokens"]:
        source = concept_dir / item["file"]
        if not source.is_file():
            raise ExportRefused(f"{source}: token file of {item['token']!r} is missing")
        trigger = trigger_word(concept, item["token"])
        name = f"{EMBEDDINGS}/{trigger}.safetensors"
        save_file(embedding_tensors(load_file(str(source)), family, source), str(folder / name))
        embeddings.append({"token": item["token"], "trigger": trigger, "file": name})
    lora = None
    lora_file = info.get("lora", LORA_FILE)  # as load_concept reads it: absent = the default name
    if lora_file:
        source = concept_dir / lora_file
        if not source.is_file():
            raise ExportRefused(f"{source}: LoRA file named by concept.json is missing")
        state = to_kohya(load_file(str(source)), family)
        (folder / LORAS).mkdir(exist_ok=True)
        lora = f"{LORAS}/{concept}.safetensors"
        triggers = [e["trigger"] for e in embeddings]
        save_file(state, str(folder / lora), metadata=_metadata(info, family, concept, triggers))
    return {"family": family, "lora": lora, "embeddings": embeddings}
