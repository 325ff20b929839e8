"""Benchmark sizes (tiny to SD 1.5 at 512 px and SDXL), their goals, and the models built for
them."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from magicapture_pipeline.core.models.random_weights import SD15_TEXT, SD15_UNET, SD15_VAE
from magicapture_pipeline.core.models.sdxl import SDXL_TEXT, SDXL_TEXT_2, SDXL_UNET, SDXL_VAE

REPORT_DIR = Path("data/08_reporting")
GOALS = {
    "stage2_full_over_plain": 1.15,
    "id_single_pass_over_no_id": 1.3,
    "cached_over_uncached_stage1": 0.7,
}
PREPROCESS_GOAL = 100.0
# Said beside every size timed with a single step per variant (issue 19 §5: make bench within
# 10 minutes on 2 cores): its figures are one step each, its ratios two single steps.
ONE_STEP_NOTE = (
    "1 warm-up step per stage, then 1 timed step per variant (to fit make bench in 10 min on "
    "2 cores): each figure is one step, not a median, and includes that variant's first-call "
    "costs; ratios move more between runs"
)
PERSON, STYLE = "<v1>", "<v2>"
SOURCE_PROMPT = "a photo of a <v1> person"
COMPOSED_PROMPT = "a photo of a <v1> person in the <v2> style"
AR_WEIGHT = 2.5  # paper
ID_WEIGHT = 1.0  # paper
ID_THRESHOLD = 0.8  # paper: T' = 0.8 T
ALIGNED_SHARE = 0.53  # side of ArcFace's aligned square / side of the training crop
AR_RESOLUTION = 16  # the attn2 layers the official code reads (16x16 for SD 1.5 at 512 px)


@dataclass(frozen=True)
class SizeSpec:
    """One model size of the benchmark."""

    description: str
    resolution: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    arcface_arch: str
    repeats: int
    warmup: int = 1
    warm_first_only: bool = False  # warm-up steps for each stage's first variant only
    stage_one: bool = True
    gpu_only: bool = False  # left out of the default sizes on CPU (minutes per step there)
    family: str = "sd15"  # sdxl: two text encoders (``text`` and ``text_2``), text_time UNet
    text_2: dict[str, Any] = field(default_factory=dict)
    ar_resolution: int | None = None  # Eq. 8's attn2 side; None = 16 when present (SD 1.5)


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        description="the demo's tiny random SD (core.models.build_tiny_sd defaults) at 128 px",
        resolution=128,
        unet={},
        vae={},
        text={},
        arcface_arch="r100",
        # 5 + 1 like the larger sizes (was 15 + 2: 519 s CPU for this size alone at load 12.5,
        # 2026-12-06, most of a make bench that must end within 10 min on 2 cores; issue 19 §5)
        repeats=5,
    ),
    "sd_like_256": SizeSpec(
        description="an SD-like model (SD block layout, channels 64-256, x8 VAE) at 256 px",
        resolution=256,
        unet={**SD15_UNET, "block_out_channels": (64, 128, 256, 256), "cross_attention_dim": 256},
        vae={
            "block_out_channels": (32, 64, 128, 128),
            "layers_per_block": 2,
            "norm_num_groups": 32,
        },
        text={
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        arcface_arch="r100",
        repeats=3,  # was 7, then 5 (issue 19 §5: make bench within 10 min on 2 cores)
    ),
    "sd15_unet_256": SizeSpec(
        description="SD 1.5's UNet, VAE and CLIP-L text encoder architectures, random weights, "
        "at 256 px",
        resolution=256,
        unet=SD15_UNET,
        vae=SD15_VAE,
        text=SD15_TEXT,
        arcface_arch="r100",
        # one warm-up step per stage + one timed step per variant (was 1 + 5 per variant: 1720
        # CPU s, 920 s wall on 2 idle cores, 2026-12-06, alone longer than the 10 min make
        # bench must take; issue 19 §5): each figure is that one step (ONE_STEP_NOTE)
        repeats=1,
        warm_first_only=True,
    ),
    "sd15_512": SizeSpec(
        description="SD 1.5's UNet, VAE and CLIP-L text encoder architectures, random weights, "
        "at 512 px (the paper's resolution; a GPU size)",
        resolution=512,
        unet=SD15_UNET,
        vae=SD15_VAE,
        text=SD15_TEXT,
        arcface_arch="r100",
        repeats=10,
        warmup=3,
        gpu_only=True,
    ),
    "sdxl_like_256": SizeSpec(
        description="an SDXL-like model (SDXL's block layout and 1/2/10 transformer depths, "
        "channels 64-256, two text encoders 128 + 256, text_time conditioning, x8 VAE) at 256 px",
        resolution=256,
        unet={
            **SDXL_UNET,
            "block_out_channels": (64, 128, 256),
            "attention_head_dim": (2, 4, 8),
            "cross_attention_dim": 128 + 256,
            "addition_time_embed_dim": 64,
            "projection_class_embeddings_input_dim": 6 * 64 + 256,
        },
        vae={
            "block_out_channels": (32, 64, 128, 128),
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "scaling_factor": SDXL_VAE["scaling_factor"],
        },
        text={
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        text_2={
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "projection_dim": 256,
            "hidden_act": "gelu",
        },
        arcface_arch="r100",
        repeats=1,  # as sd15_unet_256 (issue 19 §5)
        warm_first_only=True,
        family="sdxl",
        ar_resolution=8,  # 1/32 of the side, SDXL's deepest level (its 32 at 1024 px)
    ),  # fmt: skip
    "sdxl_1024": SizeSpec(
        description="SDXL base's UNet, VAE and both text encoders' architectures, random "
        "weights, at 1024 px (SDXL's resolution; a GPU size)",
        resolution=1024,
        unet=SDXL_UNET,
        vae=SDXL_VAE,
        text=SDXL_TEXT,
        text_2=SDXL_TEXT_2,
        arcface_arch="r100",
        repeats=10,
        warmup=3,
        gpu_only=True,
        family="sdxl",
        ar_resolution=32,  # down_blocks.2 + up_blocks.0, as the sdxl env reads
    ),
}


def default_sizes(device: str) -> list[str]:
    """Every size on a GPU; on CPU the sizes that take seconds, not minutes, per step."""
    on_gpu = torch.device(device).type == "cuda"
    return [name for name, spec in SIZES.items() if on_gpu or not spec.gpu_only]


# --------------------------------------------------------------------------- models


@dataclass
class BenchModel:
    """The components one size trains, plus the synthetic batch."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any
    resolution: int
    info: dict[str, Any] = field(default_factory=dict)
    family: str = "sd15"
    tokenizer_2: Any = None
    text_encoder_2: Any = None
    ar_resolution: int | None = None


def _tiny_model(spec: SizeSpec) -> BenchModel:
    from magicapture_pipeline.config.model import TinyModelConfig
    from magicapture_pipeline.core.models.builders import build_tiny_sd
    from magicapture_pipeline.core.models.loading import load_components

    config = TinyModelConfig(sample_size=spec.resolution)
    with tempfile.TemporaryDirectory() as folder:
        build_tiny_sd(Path(folder) / "tiny_sd", config)
        parts = load_components(Path(folder) / "tiny_sd")
    return BenchModel(
        parts.tokenizer,
        parts.text_encoder,
        parts.vae,
        parts.unet,
        parts.noise_scheduler,
        spec.resolution,
        {"tiny_config": config.model_dump()},
    )


def _random_model(spec: SizeSpec) -> BenchModel:
    from magicapture_pipeline.core.models.random_weights import build_random_model

    parts = build_random_model(
        spec.unet, spec.vae, spec.text,
        resolution=spec.resolution, family=spec.family, text_2=spec.text_2,
    )  # fmt: skip
    return BenchModel(
        parts.tokenizer, parts.text_encoder, parts.vae, parts.unet, parts.noise_scheduler,
        spec.resolution, family=spec.family, tokenizer_2=parts.tokenizer_2,
        text_encoder_2=parts.text_encoder_2, ar_resolution=spec.ar_resolution,
    )  # fmt: skip


def build_model(name: str) -> BenchModel:
    """Build the components of benchmark size ``name`` (random weights, seeded)."""
    spec = SIZES[name]
    model = _tiny_model(spec) if name == "tiny" else _random_model(spec)
    model.info["parameters_m"] = {
        part: round(sum(p.numel() for p in getattr(model, part).parameters()) / 1e6, 2)
        for part in ("unet", "vae", "text_encoder", "text_encoder_2")
        if getattr(model, part) is not None
    }
    return model
