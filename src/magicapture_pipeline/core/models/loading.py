"""Base-model components: loading, the tiny random builder and the offline tokenizer.

The ``base`` env loads SD 1.5 (the paper's base model) with ``from_pretrained``; the ``demo`` env
builds a tiny random SD once in diffusers format and then loads it through the very same
``load_components`` path, so the demo exercises exactly the code a real run uses. Which family a
model belongs to (SD 1.x or SDXL, :func:`model_family`) is read from its ``model_index.json``;
SDXL's second tokenizer / text encoder and its tiny builder live in ``core.sdxl``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"
MAX_LENGTH = 77  # CLIP's context length, the same as SD 1.5's tokenizer

# Words of the prompt templates (stage one, stage two, generation) and their initialisers: each
# becomes a single token in the offline vocabulary, so a tiny model sees real words, not bytes.
DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "of", "person", "in", "style", "painting", "portrait", "man",
    "woman", "face", "art", "artwork", "picture", "image", "drawing", "sketch", "and", "with",
    "by", "wearing", "close", "up", "high", "quality", "detailed", "background", "color",
)  # fmt: skip


# Stable Diffusion 1.5's architectures (UNet, VAE, CLIP-L text encoder), for random-weight models
# of the real size: the speed benchmark and tests build them with diffusers/transformers classes.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD15_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "vocab_size": 49410,  # SD's vocabulary + [V1], [V2]
    "hidden_act": "quick_gelu",
}


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

    def text_pairs(self) -> list[tuple[str, Any, Any]]:
        """``[(name, tokenizer, text encoder)]``: one pair for SD 1.x, two for SDXL. The names
        are the keys of an SDXL embedding file (``clip_l``, ``clip_g``)."""
        if self.text_encoder_2 is None:
            return [("clip_l", self.tokenizer, self.text_encoder)]
        return [
            ("clip_l", self.tokenizer, self.text_encoder),
            ("clip_g", self.tokenizer_2, self.text_encoder_2),
        ]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to ``symbols``, as the tokenizer will."""
    while len(symbols) > 1:
        pairs = [
            (ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))
        ]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def _word_merges(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """New merges (ranked after ``ranks``) that finish turning ``word</w>`` into one symbol.

    The word is first segmented with the existing merges, then its pieces are joined left to
    right; since every new merge ranks after the old ones, earlier words still tokenize whole.
    """
    symbols = _bpe([*word[:-1], word[-1] + WORD_END], ranks)
    merges = []
    while len(symbols) > 1:
        merges.append((symbols[0], symbols[1]))
        symbols = [symbols[0] + symbols[1], *symbols[2:]]
    return merges


def build_offline_tokenizer(extra_words: Iterable[str] = (), pad_token: str = EOS_TOKEN) -> Any:
    """Build a CLIP BPE tokenizer in code, without any download.

    The vocabulary holds the 256 byte-level characters, the same with ``</w>``, one merge chain per
    word (``DEFAULT_WORDS`` + ``extra_words``, lower-cased, letters only) and the two special
    tokens, in the order SD's tokenizer uses (specials last). Any text still tokenizes: unknown
    words fall back to byte-level symbols.

    Args:
        extra_words: further words that should become single tokens.
        pad_token: the padding token (SD and SDXL's first tokenizer: ``<|endoftext|>``; SDXL's
            second tokenizer: ``!``, a byte-level symbol already in the vocabulary).

    Returns:
        A ``transformers.CLIPTokenizer`` with ``model_max_length`` 77.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in chars + [c + WORD_END for c in chars]:
        vocab.setdefault(symbol, len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    words = dict.fromkeys(w.lower() for w in (*DEFAULT_WORDS, *extra_words))
    for word in words:
        if not word.isalpha() or not word.isascii():
            raise ValueError(f"offline tokenizer words must be ASCII letters, got {word!r}")
        for left, right in _word_merges(word, ranks):
            ranks[(left, right)] = len(ranks)
            vocab.setdefault(left + right, len(vocab))
    for special in (BOS_TOKEN, EOS_TOKEN):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=list(ranks),
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )


def _sd_scheduler_config() -> dict[str, Any]:
    """SD 1.5's noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "skip_prk_steps": True,
    }


def build_tiny_sd(out_dir: str | Path, config: Any) -> Path:
    """Build a tiny random Stable Diffusion and save it in diffusers format.

    The layout is SD's (a cross-attention UNet, an x8 ``AutoencoderKL``, a CLIP text encoder, a
    CLIP tokenizer and SD's noise schedule), only much smaller; weights are seeded, so the same
    config always gives the same model. No safety checker is saved.

    Args:
        out_dir: folder to write (``model_index.json`` + one subfolder per component).
        config: a ``TinyModelConfig`` (or anything with the same attributes).

    Returns:
        The folder written.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if getattr(config, "family", SD15) != SD15:
        raise ValueError(f"build_tiny_sd builds SD 1.x, not {config.family} (core.sdxl)")
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    tokenizer = build_offline_tokenizer(config.extra_words)
    unet = UNet2DConditionModel(
        sample_size=config.sample_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(config.up_block_types),
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
    )
    vae = tiny_vae(config)
    text_encoder = CLIPTextModel(
        tiny_text_config(config, config.text_hidden_size, config.text_layers, tokenizer)
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**_sd_scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save_tiny_pipeline(pipe, out_dir)
    logger.info("Built a tiny random SD (seed %d) at %s", config.seed, out_dir)
    return out_dir


def tiny_vae(config: Any, **extra: Any) -> Any:
    """The tiny builders' x8 ``AutoencoderKL`` (one block per ``config.vae_channels`` entry).

    ``extra`` adds family settings (SDXL: ``scaling_factor``, ``force_upcast``).
    """
    from diffusers import AutoencoderKL

    n_vae = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.sample_size,
        **extra,
    )


def tiny_text_config(
    config: Any, width: int, layers: int, tokenizer: Any, hidden_act: str = "quick_gelu"
) -> Any:
    """A tiny CLIP text encoder's config for ``tokenizer`` (projection as wide as the encoder)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=width,
        hidden_act=hidden_act,
    )


def save_tiny_pipeline(pipe: Any, out_dir: Path) -> None:
    """Save a built tiny pipeline beside ``out_dir`` and rename it into place.

    Runs of several concepts that start at once may all build it; the first rename wins and no
    run loads a half-written folder (same seed: the same model).
    """
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.new")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, out_dir)
    except OSError:  # another run put it there first
        shutil.rmtree(staging, ignore_errors=True)
        if not is_local_model(out_dir):
            raise


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
    return SDComponents(
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


def build_tiny_autoencoder(seed: int = 0) -> Any:
    """A randomly initialised ``AutoencoderTiny`` with TAESD's architecture (diffusers' defaults:
    four 64-channel levels, x8, 4 latent channels). Tests and the benchmark stand-in for the real
    TAESD weights, which cannot be downloaded here."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoencoderTiny()
    model.requires_grad_(False)
    return model.eval()


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
