"""The tiny random model builders: the tiny SD / SDXL the demos train and TAESD's stand-in.

The tiny builders write a diffusers folder that the demos then load through the very same
``load_components`` path (:mod:`.loading`) a real run takes; their weights are seeded, so the
same ``TinyModelConfig`` always gives the same model. One UNet builder (:func:`tiny_unet`), one
VAE builder (:func:`tiny_vae`) and one text-config builder (:func:`tiny_text_config`) serve both
families. Random weights at the real sizes (the speed benchmark) are :mod:`.random_weights`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from magicapture_pipeline.core.models import published
from magicapture_pipeline.core.models.loading import (
    SD15,
    SDXL,
    is_local_model,
    load_components,
    model_family,
)
from magicapture_pipeline.core.models.offline_tokenizer import build_offline_tokenizer
from magicapture_pipeline.core.models.sdxl import SECOND_PAD_TOKEN, TIME_IDS

logger = logging.getLogger(__name__)


def build_tiny_sd(out_dir: str | Path, config: Any) -> Path:
    """Build a tiny random Stable Diffusion and save it in diffusers format.

    The layout is SD's (a cross-attention UNet, an x8 ``AutoencoderKL``, a CLIP text encoder, a
    CLIP tokenizer and SD's noise schedule), only much smaller; every non-size field is SD 1.5's
    published one (:mod:`.published`); weights are seeded, so the same config always gives the
    same model. No safety checker is saved.

    Args:
        out_dir: folder to write (``model_index.json`` + one subfolder per component).
        config: a ``TinyModelConfig`` (or anything with the same attributes).

    Returns:
        The folder written.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    if getattr(config, "family", SD15) != SD15:
        raise ValueError(f"build_tiny_sd builds SD 1.x, not {config.family} (build_tiny_sdxl)")
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    tokenizer = build_offline_tokenizer(config.extra_words)
    unet = tiny_unet(config, config.text_hidden_size, **published.SD15_UNET)
    vae = tiny_vae(config, **published.SD15_VAE)
    text_encoder = CLIPTextModel(
        tiny_text_config(
            config, config.text_hidden_size, config.text_layers, tokenizer, published.CLIP_L_TEXT
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(published.SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save_tiny_pipeline(pipe, out_dir)
    logger.info("Built a tiny random SD (seed %d) at %s", config.seed, out_dir)
    return out_dir


def tiny_unet(config: Any, cross_attention_dim: int, **extra: Any) -> Any:
    """The tiny builders' ``UNet2DConditionModel`` from a ``TinyModelConfig`` (latents at
    ``sample_size / 8``), attending to ``cross_attention_dim``-wide text.

    ``extra`` adds the published non-size fields (:mod:`.published`) and family settings (SDXL:
    ``text_time`` conditioning sizes).
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=config.sample_size // 8,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(config.up_block_types),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        **extra,
    )


def tiny_vae(config: Any, **extra: Any) -> Any:
    """The tiny builders' x8 ``AutoencoderKL`` (one block per ``config.vae_channels`` entry).

    ``extra`` adds the published non-size fields (:mod:`.published`; SDXL: ``scaling_factor``,
    ``force_upcast``).
    """
    from diffusers import AutoencoderKL

    n_vae = len(config.vae_channels)
    return AutoencoderKL(
        block_out_channels=tuple(config.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        layers_per_block=1,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.sample_size,
        **extra,
    )


def tiny_text_config(
    config: Any, width: int, layers: int, tokenizer: Any, published_fields: dict[str, Any]
) -> Any:
    """A tiny CLIP text encoder's config for ``tokenizer``: the published non-size fields
    (``published_fields``: activation, norms, special token ids as published, ``eos_token_id: 2``
    included) with the sizes shrunk (projection as wide as the encoder)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **published_fields,
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=config.text_heads,
        projection_dim=width,
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


# --------------------------------------------------------------------------- SDXL


def build_tiny_sdxl(out_dir: str | Path, config: Any) -> Path:
    """Build a tiny random SDXL and save it in diffusers format (``StableDiffusionXLPipeline``).

    The layout is SDXL's, only much smaller: a UNet with ``text_time`` added conditioning and
    linear projections in its transformers, two CLIP text encoders of different widths (the
    second with a projection, whose output is the pooled embedding), two offline tokenizers (the
    second pads with ``"!"`` like SDXL's), an x8 ``AutoencoderKL`` with SDXL's scaling factor and
    ``force_upcast``, and an Euler scheduler with SDXL's schedule; every non-size field is SDXL
    base's published one (:mod:`.published`). Weights are seeded.

    Args:
        out_dir: folder to write.
        config: a ``TinyModelConfig`` with ``family: sdxl``.

    Returns:
        The folder written.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    tokenizer = build_offline_tokenizer(config.extra_words)
    tokenizer_2 = build_offline_tokenizer(config.extra_words, pad_token=SECOND_PAD_TOKEN)
    width_1, width_2 = config.text_hidden_size, config.text_2_hidden_size
    unet = tiny_unet(
        config,
        width_1 + width_2,
        **published.SDXL_UNET,
        transformer_layers_per_block=tuple(config.transformer_layers_per_block),
        addition_time_embed_dim=config.addition_time_embed_dim,
        projection_class_embeddings_input_dim=TIME_IDS * config.addition_time_embed_dim + width_2,
    )
    vae = tiny_vae(config, **published.SDXL_VAE)
    text_encoder = CLIPTextModel(
        tiny_text_config(config, width_1, config.text_layers, tokenizer, published.SDXL_TEXT)
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        tiny_text_config(
            config, width_2, config.text_2_layers, tokenizer_2, published.SDXL_TEXT_2
        )
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(published.SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    save_tiny_pipeline(pipe, out_dir)
    logger.info("Built a tiny random SDXL (seed %d) at %s", config.seed, out_dir)
    return out_dir


def build_tiny_model(out_dir: Any, config: Any) -> Any:
    """Build the tiny random model ``config.family`` names (``TinyModelConfig``) at ``out_dir``."""
    if getattr(config, "family", SD15) == SDXL:
        return build_tiny_sdxl(out_dir, config)
    return build_tiny_sd(out_dir, config)


def prepare_base_model(
    pretrained: str, tiny: Any = None, revision: str | None = None
) -> dict[str, Any]:
    """Make sure the base model loads; with ``tiny`` (a ``TinyModelConfig``: the demos) build the
    tiny random SD / SDXL at ``pretrained`` first if it is missing.

    A local folder (or the tiny model) is loaded through :func:`load_components`, the very path
    training takes; a hub id only has its ``model_index.json`` fetched (or found in the cache).

    Returns:
        ``{"path", "tiny", "revision", "built", "family"}`` (the family as the model's
        ``model_index.json`` says, ``sd15`` or ``sdxl``).

    Raises:
        RuntimeError: when ``pretrained`` is neither a local diffusers folder nor reachable.
    """
    built = False
    if tiny is not None and not is_local_model(pretrained):
        build_tiny_model(pretrained, tiny)
        built = True
    if tiny is not None or Path(pretrained).is_dir():
        load_components(pretrained)
    else:
        _check_hub_model(pretrained, revision)
    family = model_family(pretrained, revision)
    logger.info("Base model %s (%s, %s)", pretrained, family, "tiny" if tiny else "")
    return {
        "path": pretrained,
        "tiny": tiny is not None,
        "revision": revision,
        "built": built,
        "family": family,
    }


def _check_hub_model(hub_id: str, revision: str | None) -> None:
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(hub_id, "model_index.json", revision=revision)
    except Exception as error:  # the hub raises many types; all mean "not loadable here"
        raise RuntimeError(
            f"base model {hub_id!r} is neither a local diffusers folder nor reachable on the hub "
            f"(or in the HF cache): {error}. Set model.pretrained to a folder or run with "
            "--env=demo for the tiny model."
        ) from error


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

