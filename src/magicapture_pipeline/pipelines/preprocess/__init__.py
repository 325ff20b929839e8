"""The ``preprocess`` pipeline."""

from magicapture_pipeline.pipelines.preprocess.pipeline import create_pipeline

__all__ = ["create_pipeline"]
