"""``generate``: the concept sampled on composed prompts, records and a contact sheet."""

from magicapture_pipeline.pipelines.generate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
