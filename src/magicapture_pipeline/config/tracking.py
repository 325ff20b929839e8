"""Configuration of MLflow tracking, the model registry and promotion (``parameters_registry.yml``).

``params:tracking`` is read by the project hook (``hooks.py``); ``params:registry`` by the
``register`` and ``promote`` pipelines (``registry.py``). Neither is from the paper: they are the
project's MLOps settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from magicapture_pipeline.config.recipes import ours


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrackingConfig(_Strict):
    """Project hook tracking: one MLflow run per ``kedro run`` (``params:tracking``)."""

    enabled: bool = Field(
        True,
        description="Log runs to MLflow; the env var MAGICAPTURE_MLFLOW=0 also turns it off.",
        json_schema_extra=ours("every run is tracked; MAGICAPTURE_MLFLOW=0 turns it off"),
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; None = $MLFLOW_TRACKING_URI, else "
        "sqlite:///<project root>/mlflow.db.",
        json_schema_extra=ours("$MLFLOW_TRACKING_URI, else a sqlite store in the project root"),
    )
    experiment_name: str = Field(
        "magicapture",
        description="MLflow experiment, one per concept: magicapture-<concept_name>.",
        json_schema_extra=ours(
            "the project's MLOps setting (not from the paper): one experiment per concept"
        ),
    )
    history_datasets: dict[str, str] = Field(
        {
            "stage_one_history": "stage_one",
            "stage_two_history": "stage_two",
            "stage_one_validation_history": "stage_one_validation",
            "stage_two_validation_history": "stage_two_validation",
        },
        description="History DataFrames (one row per step) -> metric prefix; every numeric "
        "column is logged per step as <prefix>/<column>; a row marked 'exported' also sets the "
        "tags <prefix>.exported_step and <prefix>.export_reason.",
        json_schema_extra=ours("the catalog's loss- and validation-history datasets"),
    )
    step_image_datasets: dict[str, str] = Field(
        {
            "stage_one_validation_images": "stage_one_validation",
            "stage_two_validation_images": "stage_two_validation",
        },
        description="Image partitions keyed step_<n>/<name> -> image key prefix; each is logged "
        "with log_image(key=<prefix>/<name>, step=n), so the run's image slider walks through "
        "training (issue 20).",
        json_schema_extra=ours("the catalog's validation-image partitions"),
    )
    metrics_dataset: str = Field(
        "metrics",
        description="JSON dataset whose numeric top-level keys are logged as metrics.",
        json_schema_extra=ours("the catalog's metrics dataset"),
    )
    artifact_datasets: dict[str, str] = Field(
        {
            "validation_report": "reports",
            "mask_overlays": "images/mask_overlays",
            "attention_heatmaps": "images/attention_heatmaps",
            "generation_grid": "images/samples",
            "metrics_plot": "images/metrics",
            "concept_card": "images/card",
            "postprocess_report": "reports",
            "generation_records": "reports",
            "metrics": "reports",
            "per_image_metrics": "reports",
            "stage_one_history": "reports",
            "stage_two_history": "reports",
            "stage_one_validation_history": "reports",
            "stage_two_validation_history": "reports",
            "stage_one_loss_curves": "images/losses",
            "stage_two_loss_curves": "images/losses",
            "concept_export": "export",
        },
        description="Datasets whose saved files are logged as artifacts -> artifact folder "
        "(not 'images' itself: MLflow's UI reserves it for step images); a dataset that names "
        "its files (the export: its model card and grid, not its weights) logs only those.",
        json_schema_extra=ours("the catalog's reports and figures"),
    )

    @field_validator("artifact_datasets")
    @classmethod
    def _not_in_the_step_image_folder(cls, value: dict[str, str]) -> dict[str, str]:
        """MLflow 3.17's UI parses every file directly under ``images/`` as a ``log_image``
        step file (``<key>+step+<n>+timestamp+...``); one other file there makes it drop every
        image chart of the run, the validation slider included. Subfolders are skipped."""
        for dataset, folder in value.items():
            if folder.strip("/") == "images":
                raise ValueError(
                    f"artifact_datasets.{dataset}: folder 'images' is MLflow's step-image folder "
                    "(a file there hides the run's image charts); use a subfolder such as "
                    f"'images/{dataset}'"
                )
        return value
    max_files_per_dataset: int = Field(
        200,
        ge=1,
        description="At most this many files of one folder dataset are logged (first by name).",
        json_schema_extra=ours("bounds what one folder dataset adds to a run"),
    )
    option_datasets: list[str] = Field(
        ["concept", "metrics", "postprocess_report", "generation_records"],
        description="Datasets read after saving for which optional parts ran (identity loss, "
        "metric and post-processing backends); found keys become magicapture.* tags.",
        json_schema_extra=ours("the catalog's datasets that record which optional parts ran"),
    )


class PromotionGates(_Strict):
    """What a model version must show in its metric tags to become ``champion``."""

    required_metrics: list[str] = Field(
        ["csim_arcface"],
        description="Metrics that must be present (computed, not 'unavailable'); the paper's "
        "CSIM is ArcFace cosine similarity (csim_arcface).",
        json_schema_extra=ours(
            "CSIM (the paper's identity metric, ArcFace cosine) must be computed before a promotion"
        ),
    )
    min_metrics: dict[str, float | None] = Field(
        {"csim_arcface": 0.4},
        description="Lower bounds (null: none; envs deep-merge, so null switches one off); "
        "0.4 is a starting gate, not a paper figure: set it from your own baseline runs.",
        json_schema_extra=ours(
            "0.4 is a starting gate, not a paper figure: set it from your own runs"
        ),
    )
    max_metrics: dict[str, float | None] = Field(
        {},
        description="Upper bounds (e.g. a distance metric); null: none.",
        json_schema_extra=ours("no upper bounds"),
    )
    identity_from_heldout: bool = Field(
        True,
        description="A gate on a CSIM metric (csim_*) reads its held-out counterpart "
        "(csim_*_heldout: generated faces against source photos training never saw) when the "
        "run held a photo out (metric heldout_photos > 0), else the training photos; the gate "
        "says which (ours: CSIM against the photos a concept trained on rewards copying them).",
        json_schema_extra=ours("CSIM against the photos a concept trained on rewards copying them"),
    )
    allow_without_identity_loss: bool = Field(
        False,
        description="Explicit override: promote a concept trained without the identity loss "
        "(Eq. 7; e.g. base without an ArcFace checkpoint). Off: such a concept is refused.",
        json_schema_extra=ours(
            "issue 10: a concept trained without Eq. 7 is refused unless explicitly allowed"
        ),
    )
    note: str = Field(
        "paper settings: CSIM (ArcFace cosine, source vs generated; against the held-out "
        "photos when one was held out) must be computed and >= 0.4",
        description="Why these gates (shown when a promotion is refused).",
        json_schema_extra=ours("the gates' own explanation"),
    )


class RegistryConfig(_Strict):
    """The concept as an MLflow pyfunc: registration and promotion (``params:registry``)."""

    enabled: bool = Field(
        True,
        description="Register the concept at the end of `customize`.",
        json_schema_extra=ours("every customize run registers its concept"),
    )
    model_name: str = Field(
        "magicapture-concept",
        description="Registered model name: magicapture-<concept_name>.",
        json_schema_extra=ours(
            "the project's MLOps setting (not from the paper): one registered model per concept"
        ),
    )
    artifact_path: str = Field(
        "concept_model",
        description="Run artifact folder of the pyfunc.",
        json_schema_extra=ours("the project's MLOps setting (not from the paper)"),
    )
    candidate_alias: str = Field(
        "candidate",
        description="Alias set on every new version.",
        json_schema_extra=ours(
            "the project's MLOps setting (not from the paper): MLflow aliases (stages are "
            "deprecated)"
        ),
    )
    champion_alias: str = Field(
        "champion",
        description="Alias that serving loads (@champion).",
        json_schema_extra=ours(
            "the project's MLOps setting (not from the paper): MLflow aliases (stages are "
            "deprecated)"
        ),
    )
    previous_alias: str = Field(
        "previous",
        description="Alias kept on the former champion; rollback returns to it.",
        json_schema_extra=ours(
            "the project's MLOps setting (not from the paper): MLflow aliases, so rollback has a "
            "target"
        ),
    )
    gates: PromotionGates = Field(
        default_factory=PromotionGates, description="Promotion gates on the version's metrics."
    )
    gallery_prompts: int = Field(
        2,
        ge=0,
        le=16,
        description="Images per version in the gallery artifact: row i samples generation's "
        "prompts (prompt_templates + extra_prompts) in turn with seed generation.seed + i; "
        "0: no gallery (ours: two keep the registry step short; the page is for comparing "
        "versions, evaluation has the statistics).",
        json_schema_extra=ours("two keep the registry step short; evaluation has the statistics"),
    )
    gallery_versions: int = Field(
        4,
        ge=1,
        le=32,
        description="Versions shown side by side in the gallery: every aliased one, then the "
        "newest (ours: champion, candidate, previous and one more).",
        json_schema_extra=ours("champion, candidate, previous and one more"),
    )


class PromoteRequest(_Strict):
    """One command of the ``promote`` pipeline (``--params=model_name=...,model_version=...``)."""

    action: Literal["promote", "rollback"] = Field(
        "promote",
        description="promote a version to champion, or roll champion back to previous.",
        json_schema_extra=ours("promote is the common command; rollback is explicit"),
    )
    model_name: str = Field(..., description="Registered model name (magicapture-<concept>).")
    model_version: int | None = Field(
        None,
        ge=1,
        description="Version to promote; None = the version holding the candidate alias.",
        json_schema_extra=ours("None: the version holding the candidate alias"),
    )
