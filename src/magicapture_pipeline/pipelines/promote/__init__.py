"""``promote``: ``champion`` to a version that passes the gates, or back to ``previous``."""

from magicapture_pipeline.pipelines.promote.pipeline import create_pipeline

__all__ = ["create_pipeline"]
