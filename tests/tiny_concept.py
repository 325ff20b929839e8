"""A random concept folder in the export format, for tests of generation and the chain."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from magicapture_pipeline.core.generation import sampling as g


def write_test_concept(base: Path, out: Path) -> Path:
    """A concept folder in the export format: LoRA (UNet) + one embedding file per token.

    Written with the same diffusers/peft calls an export uses, with random LoRA weights.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    pipe = g.load_base_pipeline(base)
    torch.manual_seed(0)
    pipe.unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    )
    width = pipe.text_encoder.config.hidden_size
    tokens = []
    for name in ("<v1>", "<v2>"):
        file = f"{name.strip('<>')}.safetensors"
        save_file({name: torch.randn(1, width)}, str(out / file))
        tokens.append({"token": name, "file": file})
    (out / "concept.json").write_text(
        json.dumps(
            {"base_model": str(base), "family": "sd15", "resolution": 64, "tokens": tokens}
        )
    )
    return out


def tiny_clip_vision() -> tuple[object, object]:
    """A random CLIP vision tower with projection (the real classes): 32 px input, 16-d output.

    Returns the model (eval mode) and its image processor.
    """
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    model = CLIPVisionModelWithProjection(config).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return model, processor
