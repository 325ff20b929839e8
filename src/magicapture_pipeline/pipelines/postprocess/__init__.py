"""``postprocess``: super-resolution, optional face restoration, provenance on every PNG."""

from magicapture_pipeline.pipelines.postprocess.pipeline import create_pipeline

__all__ = ["create_pipeline"]
