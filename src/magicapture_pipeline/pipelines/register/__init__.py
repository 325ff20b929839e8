"""``register``: the trained concept as a new MLflow model version with alias ``candidate``."""

from magicapture_pipeline.pipelines.register.pipeline import create_pipeline

__all__ = ["create_pipeline"]
