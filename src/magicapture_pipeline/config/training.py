"""Configuration of the two training stages (``parameters_train_stage_one.yml``,
``parameters_train_stage_two.yml``); the base model is in ``model.py``, Eq. 7 / Eq. 8 in
``loss_terms.py``.

Defaults are the paper's (MagiCapture, arXiv 2309.06895 v2, "paper") or, where the paper is silent,
the authors' code (junhahyung/MagiCapture, "official"); each ``description`` says which.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from magicapture_pipeline.config.adapters import LoraConfigModel, TokensConfig
from magicapture_pipeline.config.loss_terms import AttentionConfig, IdentityConfig
from magicapture_pipeline.config.memory import MemoryConfig
from magicapture_pipeline.config.merge import deep_merge
from magicapture_pipeline.config.recipes import (
    AUTHORS_SCALE_LR,
    code,
    library,
    official_recipe,
    ours,
    paper,
)
from magicapture_pipeline.config.validation import ValidationConfig

# The authors' prompt templates (junhahyung/MagiCapture, lora_diffusion_/dataset.py, the lists
# PivotalTuningDatasetCapation uses with its default use_template="object": OBJECT_TEMPLATE2,
# STYLE_PERSON_TEMPLATE2, BOTH_TEMPLATE2). The paper says the composed prompt is augmented from
# templates without listing them; these are the default of both recipes. The reference and
# composed prompts phrase the style the same way ("in the style of [V2]").
SOURCE_TEMPLATES = [
    "a photo of a {} person",
    "the photo of a {} person",
    "a photo of a clean {} person",
    "a bright photo of the {} person",
    "a photo of the {} person",
    "a good photo of the {} person",
    "a photo of one {} person",
    "a photo of a nice {} person",
    "a good photo of a {} person",
    "a photo of the nice {} person",
]
REFERENCE_TEMPLATES = [
    "a painting of a person in the style of {}",
    "the painting of a person in the style of {}",
    "a clean painting of a person in the style of {}",
    "a picture of a person in the style of {}",
    "a bright painting of a person in the style of {}",
    "a good painting of a person in the style of {}",
    "a nice painting of a person in the style of {}",
]
COMPOSED_TEMPLATES = [t.replace("{}", "{v1}") + " in the style of {v2}" for t in SOURCE_TEMPLATES]
# The paragraph of arXiv 2309.06895 v2 that states the training hyper-parameters.
_TD = "Experiments: Training Details: "


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _TrainingLoopConfig(_Strict):
    """What the two training stages share: prompts, optimiser loop, augmentation, checkpoints."""

    seed: int = Field(
        0,
        ge=0,
        lt=2**32,
        description="Seed of sampling, augmentation and noise.",
        json_schema_extra=ours("any fixed seed; recorded with the run, so a run repeats"),
    )
    tokens: TokensConfig = Field(default_factory=TokensConfig, description="Placeholder tokens.")
    recipe: Literal["paper", "official"] = Field(
        "paper",
        description="paper = these defaults (paper where it states a value, else as each field "
        "says); official = every knob not set explicitly takes the authors' value (each "
        "field's recorded authors' value, config/recipes.py; docs/defaults.md lists them). "
        "Works in every env: --params=stage_two.recipe=official.",
        json_schema_extra=ours("the paper's values where it states them; official is a switch"),
    )
    source_templates: list[str] = Field(
        default_factory=lambda: list(SOURCE_TEMPLATES),
        min_length=1,
        json_schema_extra=code(
            "lora_diffusion_/dataset.py OBJECT_TEMPLATE2 (use_template='object')",
            authors=SOURCE_TEMPLATES,
        ),
        description="Prompts for source images, one drawn per step (authors' code: the 10 of "
        "dataset.py OBJECT_TEMPLATE2; paper: 'a photo of [V1] person').",
    )
    reference_templates: list[str] = Field(
        default_factory=lambda: list(REFERENCE_TEMPLATES),
        min_length=1,
        json_schema_extra=code(
            "lora_diffusion_/dataset.py STYLE_PERSON_TEMPLATE2", authors=REFERENCE_TEMPLATES
        ),
        description="Prompts for reference images (authors' code: the 7 of dataset.py "
        "STYLE_PERSON_TEMPLATE2; paper: not listed).",
    )
    gradient_accumulation_steps: int = Field(
        4,
        ge=1,
        json_schema_extra=paper(
            _TD + "'batch size of 1 and gradient accumulation over 4 steps'", authors=1
        ),
        description="Micro-batches of one image per optimiser step (paper: 4, Training Details "
        "'batch size of 1 and gradient accumulation over 4 steps'; authors' code: 1, their loops "
        "step after every image although train_magicapture.sh passes "
        "--gradient_accumulation_steps=4).",
    )
    lr_scheduler: str = Field(
        "constant",
        json_schema_extra=ours("constant: the paper states no schedule", authors="linear"),
        description="diffusers get_scheduler name (ours: constant, the paper states no schedule; "
        "authors' code: linear decay to 0 over the stage, train_magicapture.sh "
        "--lr_scheduler=linear and train(lr_scheduler_lora='linear')).",
    )
    lr_warmup_steps: int = Field(
        0,
        ge=0,
        json_schema_extra=code(
            "train_magicapture.sh --lr_warmup_steps=0 (stage one), magicapture_train.py "
            "train(lr_warmup_steps_lora=0) (stage two)", authors=0
        ),
        description="Warm-up steps of the lr schedule (authors' code: 0; paper: none).",
    )
    adam_weight_decay: float = Field(
        1e-2,
        ge=0.0,
        json_schema_extra=library(
            "torch AdamW weight_decay=1e-2 (diffusers' scripts' too); the paper states none",
            authors_by_stage={"stage_one": 0.0, "stage_two": 1e-3},
        ),
        description="AdamW weight decay (ours: torch/diffusers' 1e-2; authors' code: 0 for the "
        "stage-one embeddings, --weight_decay_ti=0.000, and 1e-3 for every stage-two group, "
        "--weight_decay_lora=0.001; paper: not stated).",
    )
    max_grad_norm: float | None = Field(
        1.0,
        ge=0.0,
        json_schema_extra=ours(
            "1.0 in both stages: the authors' stage-two clip (perform_tuning clip_grad_norm_(..., "
            "1.0)) kept for stage one, whose train_inversion clips nothing; the paper states none",
            authors_by_stage={"stage_one": None, "stage_two": 1.0},
        ),
        description="Gradient clipping norm; 0 or null = no clipping (authors' code: none in "
        "stage one, train_inversion has no clip_grad_norm_; 1.0 in stage two, perform_tuning's "
        "clip_grad_norm_(..., 1.0); paper: not stated; ours: 1.0 in both stages).",
    )
    max_timestep_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        json_schema_extra=ours(
            "the whole schedule, [0, T); the paper states no cap",
            authors_by_stage={"stage_one": 1.0, "stage_two": 0.8},
        ),
        description="Reconstruction timesteps are drawn from [0, fraction * T) (ours/paper: 1.0; "
        "authors' code: 0.8 in stage two, perform_tuning's loss_step(t_mutliplier=0.8)).",
    )
    style_weight: float = Field(
        1.0,
        ge=0.0,
        json_schema_extra=ours("1 = no extra weight; the paper states none", authors=2.0),
        description="Weight of the reference and composed reconstruction losses while the "
        "stage is in its first style_weight_until of steps (paper: not stated, 1; authors' code: "
        "2, --lambda_style=2 with cur_t < 0.5 in loss_step).",
    )
    style_weight_until: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        json_schema_extra=code("magicapture_train.py loss_step cur_t < 0.5", authors=0.5),
        description="Fraction of the stage's steps during which style_weight applies (authors' "
        "code: 0.5).",
    )
    color_jitter: list[float] = Field(
        [0.0, 0.0],
        min_length=2,
        max_length=2,
        json_schema_extra=ours("off: the paper states no jitter", authors=[0.1, 0.1]),
        description="Brightness and contrast jitter, drawn once per image variant (ours: off, "
        "the paper states none; authors' code: 0.1, 0.1, dataset.py ColorJitter(0.1, 0.1) "
        "with --color_jitter, drawn once when the latents are cached).",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "fp16",
        json_schema_extra=ours(
            "fp16 on a GPU for speed, forced off on CPU",
            authors_by_stage={"stage_one": "no", "stage_two": "fp16"},
        ),
        description="Accelerate mixed precision; forced to 'no' on CPU.",
    )
    memory: MemoryConfig = Field(
        default_factory=MemoryConfig, description="Memory options (checkpointing, attention)."
    )
    cache_latents: bool = Field(
        True,
        description="Encode each augmented image once instead of every step.",
        json_schema_extra=code(
            "magicapture_train.py train(cached_latents=True) -> text2img_dataloader: one "
            "vae.encode(...).latent_dist.sample() per image"
        ),
    )
    hflip: bool = Field(
        True,
        description="Also train on horizontally flipped copies.",
        json_schema_extra=ours("both orientations of every image"),
    )
    mask_floor: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        json_schema_extra=paper(
            "Eq. 4-6, 8: M_v is 'a binary target mask' (Method: Attention Refocusing)", authors=0.01
        ),
        description="Soften masks as (M + floor) / max before Eq. 4-6 (paper: binary, 0; "
        "authors' code: 0.01, loss_step's (mask + 0.01) / max).",
    )
    checkpoint_dir: str | None = Field(
        None,
        description="Folder of checkpoints (resume reads it); must lie inside the project's "
        "data/<layer>/<concept>/ (or $MAGICAPTURE_DATA_ROOT/<layer>/<concept>/), checked before "
        "anything is cleared (ours: a run writes and clears only inside its concept).",
        json_schema_extra=ours("no checkpoints unless a folder inside the concept is given"),
    )
    resume: bool = Field(
        False,
        description="Continue from the newest complete checkpoint in checkpoint_dir (incomplete "
        "or corrupt ones are skipped with a warning).",
        json_schema_extra=ours("a run starts fresh unless asked to resume"),
    )
    keep_checkpoints: int = Field(
        2,
        ge=0,
        description="Keep the newest K complete checkpoints of the stage, delete older ones "
        "after each save; 0 = keep all (ours: bounds disk use on long runs).",
        json_schema_extra=ours("bounds disk use on long runs"),
    )
    log_every: int = Field(
        1,
        ge=1,
        description="History row every N optimiser steps.",
        json_schema_extra=ours("a history row every step: the loss curves show every step"),
    )
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig,
        description="Sample and score during training, keep the best step (issue 20).",
    )
    device: str | None = Field(
        None,
        description="Force a device; None = accelerate's choice.",
        json_schema_extra=library("accelerate's device choice (None)"),
    )

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("recipe") == "official":
            return deep_merge(official_recipe(cls), data)
        return data

    @model_validator(mode="after")
    def _validation_fits(self) -> _TrainingLoopConfig:
        every, steps = self.validation.every_n_steps, getattr(self, "max_steps", None)
        if steps is not None and every > steps:
            raise ValueError(
                f"validation.every_n_steps = {every} is larger than max_steps = {steps}: "
                "it would never validate"
            )
        return self


class StageOneConfig(_TrainingLoopConfig):
    """Stage one: only the [V1]/[V2] embedding rows train (paper: Two-phase Optimization)."""

    STAGE: ClassVar[str] = "stage_one"

    checkpoint_every: int = Field(
        200,
        ge=0,
        description="Checkpoint every K steps; 0 = never (ours: 200 of 1200 steps, what every "
        "run used before issue 17).",
        json_schema_extra=ours("200 of 1200 steps, what every run used before issue 17"),
    )

    learning_rate: float = Field(
        5e-4,
        gt=0.0,
        json_schema_extra=paper(
            _TD + "first phase, 'a learning rate 5e-4 for updating the text embeddings'",
            authors=5e-4 * AUTHORS_SCALE_LR,
        ),
        description="AdamW lr of the embeddings (paper: 5e-4; authors' code: "
        "--learning_rate_ti=5e-4 x --scale_lr 4 = 2e-3).",
    )
    max_steps: int = Field(
        1200,
        ge=1,
        le=100_000,
        json_schema_extra=paper(
            _TD + "'The first training phase consists of a total of 1200 steps'", authors=1200
        ),
        description="Optimiser steps (paper: 1200; at most 100,000, ours: 80x the paper's, "
        "beyond any run a machine can finish and a sign of a typo).",
    )
    embedding_norm_target: float | None = Field(
        None,
        gt=0.0,
        json_schema_extra=ours("off: the paper states no norm decay", authors=0.4),
        description="After each step pull the [V1]/[V2] rows' norm towards this value by "
        "min(1, 100 * lr) of the gap (authors' code: 0.4, --clip_ti_decay in train_inversion; "
        "paper: not stated; null = off). SDXL: the first (CLIP-L) table only.",
    )


class StageTwoConfig(_TrainingLoopConfig):
    """Stage two: LoRA + embeddings with the three tasks (paper, Method; Eq. 10)."""

    STAGE: ClassVar[str] = "stage_two"

    checkpoint_every: int = Field(
        250,
        ge=0,
        description="Checkpoint every K steps; 0 = never (ours: 250 of 1500 steps, what every "
        "run used before issue 17).",
        json_schema_extra=ours("250 of 1500 steps, what every run used before issue 17"),
    )

    composed_templates: list[str] = Field(
        default_factory=lambda: list(COMPOSED_TEMPLATES),
        min_length=1,
        json_schema_extra=code(
            "lora_diffusion_/dataset.py BOTH_TEMPLATE2 (paper, Method: Composed Prompt Learning: "
            "augmented from 'predefined prompt templates', none listed)",
            authors=COMPOSED_TEMPLATES,
        ),
        description="Composed prompts, pseudo-labelled by a reference image (paper: "
        "augmented from templates; authors' code: the 10 of dataset.py BOTH_TEMPLATE2, the "
        "source phrasings + 'in the style of [V2]').",
    )
    task_weights: list[float] = Field(
        [1.0, 1.0, 1.0],
        min_length=3,
        max_length=3,
        description="Sampling odds of source:reference:composed (paper: 1:1:1).",
        json_schema_extra=paper(
            "Supplement: Training Details, Eq. 10: L_s + L_r + L_c, the source, reference and "
            "composed tasks weighted equally (here: equal odds of the task a micro-batch draws)"),
    )
    lora: LoraConfigModel = Field(default_factory=LoraConfigModel, description="LoRA.")
    learning_rate: float = Field(
        1e-4,
        gt=0.0,
        json_schema_extra=paper(
            _TD + "second phase, 'the learning rate is 1e-4 for the projection layers'",
            authors=1e-4 * AUTHORS_SCALE_LR,
        ),
        description="LoRA lr (paper: 1e-4; authors' code: --learning_rate_unet=1e-4 x "
        "--scale_lr 4 = 4e-4).",
    )
    embedding_learning_rate: float = Field(
        1e-5,
        ge=0.0,
        json_schema_extra=paper(_TD + "second phase, '1e-5 for the text embeddings'", authors=1e-4),
        description="Embedding lr (paper: 1e-5; authors' code: --continue_inversion_lr=1e-4, "
        "not scaled); 0 freezes the embeddings.",
    )
    max_steps: int = Field(
        1500,
        ge=1,
        le=100_000,
        json_schema_extra=paper(
            _TD + "second phase, 'a total of 1500 training steps'", authors=1500
        ),
        description="Optimiser steps (paper: 1500; at most 100,000, ours: 66x the paper's, "
        "beyond any run a machine can finish and a sign of a typo).",
    )
    identity: IdentityConfig = Field(default_factory=IdentityConfig, description="Eq. 7.")
    attention: AttentionConfig = Field(default_factory=AttentionConfig, description="Eq. 8.")
    heatmap_every: int = Field(
        100,
        ge=0,
        description="Attention-heatmap figure every N steps; 0 = off.",
        json_schema_extra=ours("a heatmap figure every 100 steps, 15 over the paper's 1500"),
    )

    @model_validator(mode="after")
    def _three_tasks(self) -> StageTwoConfig:
        if len(self.task_weights) != 3 or min(self.task_weights) < 0 or sum(self.task_weights) <= 0:
            raise ValueError("task_weights needs three non-negative odds with a positive sum")
        return self
