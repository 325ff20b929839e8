"""The ``sample_data`` pipeline."""

from magicapture_pipeline.pipelines.sample_data.pipeline import create_pipeline

__all__ = ["create_pipeline"]
