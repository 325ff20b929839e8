"""Base-model components: what a model folder is (family), and loading it.

The ``base`` env loads SD 1.5 (the paper's base model) with ``from_pretrained``; the ``demo`` env
builds a tiny random SD once in diffusers format (:mod:`.builders`) and then loads it through the
very same :func:`load_components` path, so the demo exercises exactly the code a real run uses.
Which family a model belongs to (SD 1.x or SDXL, :func:`model_family`) is read from its
``model_index.json``; SDXL's conditioning lives in :mod:`.sdxl`, the offline tokenizer in
:mod:`.offline_tokenizer`. Also here: loading TAESD and checking it can stand in for the VAE.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SD15 = "sd15"
SDXL = "sdxl"
# ``model_index.json`` ``_class_name`` -> family. Every SD 1.x/2.x text-to-image folder names
# ``StableDiffusionPipeline``; SDXL base folders name ``StableDiffusionXLPipeline``.
PIPELINE_FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": SD15,
    "StableDiffusionXLPipeline": SDXL,
}


@dataclass
class SDComponents:
    """The parts of a base model that training and generation need.

    Attributes:
        tokenizer: CLIP tokenizer (placeholder tokens are added to it later).
        text_encoder: CLIP text encoder (SDXL: CLIP ViT-L, 768-d).
        vae: ``AutoencoderKL`` (x8 spatial compression).
        unet: ``UNet2DConditionModel``.
        noise_scheduler: the DDPM training scheduler built from the model's scheduler config.
        source: the folder or hub id the components came from.
        family: ``"sd15"`` or ``"sdxl"`` (from ``model_index.json``).
        tokenizer_2: SDXL's second tokenizer (``None`` for SD 1.x).
        text_encoder_2: SDXL's ``CLIPTextModelWithProjection`` (OpenCLIP bigG, 1280-d; ``None``
            for SD 1.x).
        text_pooling: ``{table: record}`` of :func:`pool_at_end_of_text` per text encoder
            (filled by :func:`ensure_end_of_text_pooling`; ``concept.json`` records it).
    """

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    source: str
    family: str = SD15
    tokenizer_2: Any = None
    text_encoder_2: Any = None
    text_pooling: dict[str, dict[str, Any]] = field(default_factory=dict)

    def text_pairs(self) -> list[tuple[str, Any, Any]]:
        """``[(name, tokenizer, text encoder)]``: one pair for SD 1.x, two for SDXL. The names
        are the keys of an SDXL embedding file (``clip_l``, ``clip_g``)."""
        if self.text_encoder_2 is None:
            return [("clip_l", self.tokenizer, self.text_encoder)]
        return [
            ("clip_l", self.tokenizer, self.text_encoder),
            ("clip_g", self.tokenizer_2, self.text_encoder_2),
        ]


def is_local_model(path_or_hub_id: str | Path) -> bool:
    """True when ``path_or_hub_id`` names an existing diffusers folder (``model_index.json``)."""
    return (Path(path_or_hub_id) / "model_index.json").is_file()


def model_family(path_or_hub_id: str | Path, revision: str | None = None) -> str:
    """The family (``"sd15"`` / ``"sdxl"``) of a diffusers model, from its ``model_index.json``.

    A local folder is read directly; a hub id through the Hugging Face cache (offline when
    ``HF_HUB_OFFLINE=1``), so the family always follows the files, never a separate flag.

    Raises:
        ValueError: naming the file and its ``_class_name`` when it is no supported pipeline.
    """
    source = str(path_or_hub_id)
    if Path(source).is_dir():
        index = Path(source) / "model_index.json"
        if not index.is_file():
            raise ValueError(f"{source}: a folder without model_index.json, not a diffusers model")
    else:
        from huggingface_hub import hf_hub_download

        index = Path(hf_hub_download(source, "model_index.json", revision=revision))
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except json.JSONDecodeError as error:
        raise ValueError(f"{index}: not valid JSON ({error})") from error
    if class_name not in PIPELINE_FAMILIES:
        raise ValueError(
            f"{index}: _class_name {class_name!r} is not a supported base model; expected one of "
            f"{sorted(PIPELINE_FAMILIES)}"
        )
    return PIPELINE_FAMILIES[class_name]


def load_components(
    path_or_hub_id: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> SDComponents:
    """Load SD 1.x or SDXL components with ``from_pretrained`` (one subfolder each).

    A local folder is read with ``local_files_only=True``; a hub id goes through the Hugging Face
    cache (offline when ``HF_HUB_OFFLINE=1``). The noise scheduler is a ``DDPMScheduler`` built from
    the model's scheduler config, as diffusers' training scripts do. The family comes from
    ``model_index.json`` (:func:`model_family`); SDXL adds ``tokenizer_2`` and
    ``text_encoder_2`` (``CLIPTextModelWithProjection``). The VAE is loaded in ``dtype`` like the
    rest; SDXL's VAE overflows in fp16, so the trainers encode in fp32 (its ``force_upcast``).

    Args:
        path_or_hub_id: a diffusers folder or a hub id such as ``stable-diffusion-v1-5/...``.
        device: where the modules go.
        dtype: floating-point type of the modules.
        revision: hub revision (ignored for local folders).

    Returns:
        The loaded components, every module in eval mode without gradients.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    source = str(path_or_hub_id)
    local = Path(source).is_dir()
    kwargs: dict[str, Any] = {"local_files_only": True} if local else {"revision": revision}
    family = model_family(source, revision)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
    text_encoder = CLIPTextModel.from_pretrained(
        source, subfolder="text_encoder", torch_dtype=dtype, **kwargs
    )
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kwargs)
    unet = UNet2DConditionModel.from_pretrained(
        source, subfolder="unet", torch_dtype=dtype, **kwargs
    )
    noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
    tokenizer_2 = text_encoder_2 = None
    if family == SDXL:
        tokenizer_2 = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **kwargs)
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", torch_dtype=dtype, **kwargs
        )
    for module in (text_encoder, text_encoder_2, vae, unet):
        if module is None:
            continue
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    components = SDComponents(
        tokenizer,
        text_encoder,
        vae,
        unet,
        noise_scheduler,
        source,
        family=family,
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
    )
    ensure_end_of_text_pooling(components)
    return components


def pool_at_end_of_text(tokenizer: Any, text_encoder: Any) -> dict[str, Any]:
    """Make a CLIP text encoder pool at the end-of-text token whatever ids are added after it.

    transformers' ``CLIPTextTransformer`` pools at ``input_ids.argmax(-1)`` when its config's
    ``eos_token_id`` is 2 (configs written before transformers PR #24773, e.g. the published
    SD 1.5 ``text_encoder`` and SDXL base ``text_encoder`` / ``text_encoder_2`` configs): at the
    largest id of the prompt, which is end-of-text (49407) only while no token was added. [V1] and
    [V2] are added after it (49408, 49409), so on those configs SDXL's pooled ``text_embeds`` would
    be the hidden state of a placeholder. Setting ``eos_token_id`` (config and the transformer's
    cached copy) to the tokenizer's end-of-text id makes it pool at the first end-of-text
    position, PR #24773's rule. Idempotent.

    Returns:
        ``{"config_eos_token_id": the value found, "eos_token_id": the value now}``.
    """
    eos = int(tokenizer.eos_token_id)
    found = text_encoder.config.eos_token_id
    text_encoder.config.eos_token_id = eos
    for module in pooling_modules(text_encoder):  # the encoder itself or its ``text_model``
        module.eos_token_id = eos
    return {"config_eos_token_id": found, "eos_token_id": eos}


def pooling_modules(text_encoder: Any) -> list[Any]:
    """The modules of ``text_encoder`` that cache the ``eos_token_id`` they pool at."""
    return [module for module in text_encoder.modules() if hasattr(module, "eos_token_id")]


def ensure_end_of_text_pooling(components: SDComponents) -> dict[str, dict[str, Any]]:
    """:func:`pool_at_end_of_text` on every text encoder of ``components`` not yet done; the
    records (kept in ``components.text_pooling``) by table name (``clip_l``, ``clip_g``)."""
    for name, tokenizer, encoder in components.text_pairs():
        if name not in components.text_pooling:
            components.text_pooling[name] = pool_at_end_of_text(tokenizer, encoder)
    return components.text_pooling


def token_ids(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Tokenize ``prompts`` padded to the tokenizer's max length (77 for SD)."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


# --------------------------------------------------------------------------- TAESD


def load_tiny_autoencoder(
    path_or_hub_id: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load an ``AutoencoderTiny`` (TAESD, ``madebyollin/taesd`` for SD 1.x) with
    ``from_pretrained``: a local folder with ``local_files_only=True``, a hub id through the
    Hugging Face cache. Frozen, in eval mode.

    Raises:
        OSError: naming the source and the two ways out, when it cannot be loaded.
    """
    from diffusers import AutoencoderTiny

    source = str(path_or_hub_id)
    kwargs: dict[str, Any] = {"local_files_only": True} if Path(source).is_dir() else {}
    try:
        model = AutoencoderTiny.from_pretrained(source, torch_dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:
        raise OSError(
            f"identity.tiny_autoencoder {source!r} could not be loaded ({error}). Download it "
            f"where there is a network (`hf download {source} --local-dir models/taesd`) and "
            "point identity.tiny_autoencoder at the folder, or set identity.decoder: vae."
        ) from error
    model.requires_grad_(False)
    return model.eval().to(device)


def upsampling_factor(decoder: Any) -> int:
    """Image pixels per latent pixel of an ``AutoencoderKL`` or ``AutoencoderTiny``."""
    config = decoder.config
    if "decoder_block_out_channels" in config:  # AutoencoderTiny
        levels = len(config.decoder_block_out_channels)
        return int(config.upsampling_scaling_factor) ** (levels - 1)
    return 2 ** (len(config.block_out_channels) - 1)


def check_decoder_matches(decoder: Any, vae: Any) -> None:
    """Raise when ``decoder`` cannot stand in for ``vae``'s decoder (latent channels, scale)."""
    theirs = (int(decoder.config.latent_channels), upsampling_factor(decoder))
    ours = (int(vae.config.latent_channels), upsampling_factor(vae))
    if theirs != ours:
        raise ValueError(
            f"the tiny autoencoder decodes {theirs[0]}-channel latents x{theirs[1]}, the base "
            f"model's VAE {ours[0]}-channel latents x{ours[1]}: it cannot decode this model's "
            "latents (identity.decoder: tiny_autoencoder needs the TAESD of the base model's "
            "family, e.g. madebyollin/taesd for SD 1.x)"
        )
