"""Configuration of the benchmark (``parameters_benchmark.yml``, ``params:benchmark``): the rows
of the Table-1/Table-3-shaped comparison, DreamBooth's prior preservation and the paper's figures.

Each field's metadata names the source of its default (``config/recipes.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from magicapture_pipeline.config.recipes import library, ours

_FROZEN = ConfigDict(extra="forbid")


class PaperFigures(BaseModel):
    """The paper's own numbers for one benchmark row (never ours)."""

    model_config = _FROZEN

    csim: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="The paper's CSIM for the row (its 'pretrained recognition network', unnamed).",
        json_schema_extra=ours("empty unless a row transcribes the paper's figure"),
    )
    style: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="The paper's masked CLIP style similarity for the row.",
        json_schema_extra=ours("empty unless a row transcribes the paper's figure"),
    )
    aesthetic: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="The paper's LAION aesthetic score for the row.",
        json_schema_extra=ours("empty unless a row transcribes the paper's figure"),
    )
    source: str | None = Field(
        default=None,
        description="Where the figures are printed (e.g. 'paper Table 1').",
        json_schema_extra=ours("empty unless a row transcribes the paper's figure"),
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
        json_schema_extra=ours(
            "DreamBooth's 'a [class noun]' (Ruiz et al. 2023) with the noun our source templates "
            "use"
        ),
    )
    num_class_images: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Class images generated once per concept and cached (diffusers "
        "train_dreambooth_lora.py --num_class_images default 100, the LoRA recipe this row "
        "follows; not the DreamBooth paper's count; demo: 2 via benchmark.num_class_images).",
        json_schema_extra=library(
            "diffusers examples/dreambooth/train_dreambooth_lora.py --num_class_images default 100"
        ),
    )
    prior_loss_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="Weight of the prior loss added per step (DreamBooth paper lambda = 1; "
        "diffusers --prior_loss_weight default 1.0).",
        json_schema_extra=library(
            "diffusers train_dreambooth_lora.py --prior_loss_weight default 1.0 (DreamBooth paper:"
            " lambda = 1)"
        ),
    )
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**32,
        description="Seed of class image i is seed + i (ours: diffusers draws unseeded; a seed "
        "makes the cache reproducible).",
        json_schema_extra=ours(
            "diffusers draws unseeded; a seed makes the class-image cache reproducible"
        ),
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
        default={},
        description="Overrides of params:stage_one for this variant.",
        json_schema_extra=ours("no overrides: params:stage_one applies"),
    )
    stage_two: dict[str, Any] = Field(
        default={},
        description="Overrides of params:stage_two for this variant.",
        json_schema_extra=ours("no overrides: params:stage_two applies"),
    )
    postprocess: bool = Field(
        default=False,
        description="Post-process (params:postprocess: super-resolution + face restoration) "
        "before scoring.",
        json_schema_extra=ours("a row scores its raw samples unless it says otherwise"),
    )
    concept_from: str | None = Field(
        default=None,
        description="Reuse the concept trained for this earlier variant instead of training.",
        json_schema_extra=ours("each row trains its own concept"),
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        description="Sampling CFG for this row (None: params:generation's); baselines: 7.5.",
        json_schema_extra=ours("None: params:generation's"),
    )
    num_inference_steps: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Sampling steps for this row (None: params:generation's); baselines: 50; "
        "at most 1000, the scheduler's training timesteps.",
        json_schema_extra=ours("None: params:generation's"),
    )
    lora_scale: float | None = Field(
        default=None,
        ge=0.0,
        description="LoRA scale of the row's UNet and text encoder at sampling (None: "
        "params:generation's 0.6 / 0.9 for MagiCapture rows, 1.0 = full strength for the "
        "baselines, as their papers sample; ours: MagiCapture's 0.6 biased them low).",
        json_schema_extra=ours(
            "None: 0.6 / 0.9 for MagiCapture rows, 1.0 for the baselines as their papers sample "
            "(MagiCapture's 0.6 biased them low)"
        ),
    )
    masked_losses: bool | None = Field(
        default=None,
        description="Train on MagiCapture's masked reconstruction (face region for source "
        "images, its complement for references; Eq. 4-6) or on the whole image (None: masked "
        "for MagiCapture rows, whole image for the baselines, as their papers train).",
        json_schema_extra=ours(
            "None: masked for MagiCapture rows, whole image for the baselines, as their papers "
            "train"
        ),
    )
    prior_preservation: PriorPreservationConfig | None = Field(
        default=None,
        description="DreamBooth rows: class images of the base model and the prior loss per "
        "step (None: no prior loss; only method dreambooth_lora may set it).",
        json_schema_extra=ours("no prior loss unless a DreamBooth row sets it"),
    )
    settings_source: str = Field(
        default="",
        description="Where this row's training and sampling settings come from (paper / "
        "authors' code / ours + reason); shown in the table.",
        json_schema_extra=ours("empty: a row states its own"),
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
        default=None,
        ge=1,
        description="Overrides generation.images_per_prompt for every variant.",
        json_schema_extra=ours(
            "None = no override: the value of params:generation / the stages applies"
        ),
    )
    num_inference_steps: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Overrides every variant's sampling steps (generation's and the row's; "
        "a demo budget); at most 1000, the scheduler's training timesteps.",
        json_schema_extra=ours(
            "None = no override: the value of params:generation / the stages applies"
        ),
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Caps every variant's stage one / two optimiser steps (demo: tiny budget); "
        "at most 100,000 like the stages' own max_steps.",
        json_schema_extra=ours(
            "None = no override: the value of params:generation / the stages applies"
        ),
    )
    num_class_images: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Caps every row's prior_preservation.num_class_images (demo: a handful).",
        json_schema_extra=ours(
            "None = no override: the value of params:generation / the stages applies"
        ),
    )
    class_images_dir: str | None = Field(
        default=None,
        description="Folder of the cached class images, inside data/<layer>/<concept>/ (None: "
        "a temporary folder per run, nothing cached).",
        json_schema_extra=ours(
            "a temporary folder per run, nothing cached, unless a folder inside the concept is "
            "given"
        ),
    )
    paper_note: str = Field(
        default="",
        description="Where the paper column comes from, or why it is empty.",
        json_schema_extra=ours("empty until the benchmark says where its paper column comes from"),
    )
