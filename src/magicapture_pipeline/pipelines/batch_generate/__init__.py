"""``batch_generate``: a prompts file through a registered concept -> images + records CSV."""

from magicapture_pipeline.pipelines.batch_generate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
