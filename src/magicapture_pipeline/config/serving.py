"""Limits of the served concept and the batch generation pipeline (``parameters_serving.yml``).

Not from the paper: they keep one request from taking the service down. The limits are stored in
the registered model's config at registration, so ``mlflow models serve`` enforces them with no
extra set-up; ``mlflow.pyfunc.load_model(uri, model_config={"limits": {...}})`` overrides them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from magicapture_pipeline.config.recipes import ours

MAX_SEED = 2**63 - 1  # the request schema's seed is a signed 64-bit integer ("long")


class ServingLimits(BaseModel):
    """What one request to the registered concept may ask for (``params:serving.limits``)."""

    model_config = ConfigDict(extra="forbid")

    max_rows: int = Field(
        4,
        ge=1,
        description="Most rows (images) one request may ask for; more is refused (400).",
        json_schema_extra=ours("keeps one request from taking the service down"),
    )
    min_steps: int = Field(
        1,
        ge=1,
        description="Fewest denoising steps a request may set.",
        json_schema_extra=ours("any positive step count"),
    )
    max_steps: int = Field(
        150,
        ge=1,
        description="Most denoising steps a request may set (ours: 3x the paper's 50).",
        json_schema_extra=ours("3x the authors' 50 inference steps"),
    )
    min_guidance: float = Field(
        0.0,
        ge=0.0,
        description="Smallest guidance_scale accepted.",
        json_schema_extra=ours("any non-negative guidance"),
    )
    max_guidance: float = Field(
        30.0,
        ge=0.0,
        description="Largest guidance_scale accepted.",
        json_schema_extra=ours("well above any useful guidance scale"),
    )
    max_prompt_tokens: int | None = Field(
        None,
        ge=3,
        description="Longest prompt in tokens, start/end tokens included; None = the text "
        "encoder's own limit (CLIP: 77). Longer prompts are refused, never silently cut.",
        json_schema_extra=ours("None: the text encoder's own limit (CLIP: 77)"),
    )

    max_prompt_chars: int = Field(
        2000,
        ge=1,
        le=1_000_000,
        description="Longest prompt in characters, checked before tokenising (ours: CLIP's 77 "
        "tokens rarely span 1000 characters; a 50 MB prompt took minutes and GBs to tokenise).",
        json_schema_extra=ours(
            "CLIP's 77 tokens rarely span 1000 characters; a 50 MB prompt took minutes and GBs to "
            "tokenise"
        ),
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=256 * 1_048_576,
        description="Largest request body in bytes, refused (413) by the serving guard before it "
        "is parsed (ours: 1 MiB holds max_rows prompts of max_prompt_chars with room to spare).",
        json_schema_extra=ours(
            "1 MiB holds max_rows prompts of max_prompt_chars with room to spare"
        ),
    )

    @model_validator(mode="after")
    def _ranges(self) -> ServingLimits:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} > max_steps {self.max_steps}")
        if self.min_guidance > self.max_guidance:
            raise ValueError(f"min_guidance {self.min_guidance} > max_guidance {self.max_guidance}")
        return self


class ServingConfig(BaseModel):
    """The served concept and the batch generation pipeline (``params:serving``)."""

    model_config = ConfigDict(extra="forbid")

    limits: ServingLimits = Field(
        default_factory=ServingLimits, description="Request limits stored in the registered model."
    )
    model_uri: str = Field(
        "models:/magicapture-my-concept@champion",
        description="Model the batch pipeline samples: models:/magicapture-<concept>@<alias>.",
        json_schema_extra=ours("the champion of the default concept name"),
    )
    batch_chunk_rows: int | None = Field(
        None,
        ge=1,
        description="Rows per predict call in the batch pipeline; None = limits.max_rows.",
        json_schema_extra=ours("None: limits.max_rows"),
    )
