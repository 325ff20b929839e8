"""The tiny random SDXL of the tests (SDXL's layout: no attention at the first level, two text
encoders of different widths so a mixed-up table shows as a shape error), and random SD 1.5 and
SDXL concepts (non-zero LoRA on UNet and text encoders) written with the same diffusers/peft
calls an export uses."""

from __future__ import annotations

from pathlib import Path

import torch

from magicapture_pipeline.config.model import TinyModelConfig

TINY_SDXL = TinyModelConfig(
    family="sdxl",
    sample_size=64,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
)
TOKENS = ("<v1>", "<v2>")


def lora_state(model: torch.nn.Module, targets, seed: int) -> dict[str, torch.Tensor]:
    """Inject a random (gaussian) rank-4 LoRA into ``model`` and return it in diffusers format."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=targets)
    if hasattr(model, "add_adapter") and hasattr(model, "set_adapters"):  # diffusers UNet
        model.add_adapter(config)
    else:
        inject_adapter_in_model(config, model)
    with torch.no_grad():  # gaussian init leaves B at zero: give B values so the LoRA shows
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def write_sdxl_concept(base: Path, out: Path) -> tuple[dict, object]:
    """Export a random SDXL concept (UNet + both text encoders LoRA, both token tables) with the
    project's ``core.concept.export``; returns ``concept.json`` and the in-memory components
    (adapters attached) that the concept was taken from."""
    from magicapture_pipeline.core.generation.export import export
    from magicapture_pipeline.core.models.families import FamilyAdapter
    from magicapture_pipeline.core.models.loading import load_components

    parts = load_components(base)
    adapter = FamilyAdapter(parts)
    adapter.add_placeholder_tokens(TOKENS, ["person", "painting"])
    generator = torch.Generator().manual_seed(3)
    embeddings = {
        token: {
            name: torch.randn(enc.config.hidden_size, generator=generator)
            for name, _, enc in adapter.tables
        }
        for token in TOKENS
    }
    adapter.set_embeddings(embeddings)
    attention = ["q_proj", "k_proj", "v_proj", "out_proj"]
    unet_lora = lora_state(parts.unet, r".*attn2\.(to_q|to_k|to_v|to_out\.0)$", 0)
    te_lora = lora_state(parts.text_encoder, attention, 1)
    te2_lora = lora_state(parts.text_encoder_2, attention, 2)
    info = export(
        out,
        embeddings,
        unet_lora,
        te_lora,
        {
            "base_model": str(base),
            "family": "sdxl",
            "resolution": 64,
            "text_pooling": parts.text_pooling,
        },
        text_encoder_2_lora=te2_lora,
    )
    return info, parts


def assert_stock_load_matches(base: Path, folder: Path, prompt: str, **components) -> None:
    """Stock diffusers (``StableDiffusionXLPipeline`` + the project's ``load_concept`` on the
    exported ``folder``) samples the same image as a pipeline built on the in-memory
    ``components`` (``unet``, ``text_encoder``, ``text_encoder_2``, ``tokenizer``,
    ``tokenizer_2``: the concept's adapters attached, its rows written)."""
    import numpy as np
    from diffusers import StableDiffusionXLPipeline

    from magicapture_pipeline.core.generation.export import load_concept

    def sample(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe(
            prompt, num_inference_steps=2, height=64, width=64, output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip

    in_memory = StableDiffusionXLPipeline.from_pretrained(base, local_files_only=True, **components)
    expected = sample(in_memory)
    stock = StableDiffusionXLPipeline.from_pretrained(base, local_files_only=True)
    load_concept(stock, folder)
    np.testing.assert_allclose(sample(stock), expected, atol=1e-5)


def write_sd_concept(base: Path, out: Path) -> dict:
    """Export a random SD 1.5 concept of the tiny SD at ``base`` (UNet LoRA of the official
    preset, text-encoder attention LoRA, both non-zero; two random token rows); returns
    ``concept.json``."""
    from magicapture_pipeline.core.generation.export import export
    from magicapture_pipeline.core.models.loading import load_components
    from magicapture_pipeline.core.training.lora import TEXT_ENCODER_ATTENTION, UNET_OFFICIAL

    parts = load_components(base)
    unet = lora_state(parts.unet, UNET_OFFICIAL, 0)
    text = lora_state(parts.text_encoder, list(TEXT_ENCODER_ATTENTION), 1)
    generator = torch.Generator().manual_seed(5)
    width = parts.text_encoder.config.hidden_size
    embeddings = {t: torch.randn(width, generator=generator) for t in TOKENS}
    return export(out, embeddings, unet, text, {"base_model": str(base), "family": "sd15"})
