"""``evaluate``: CSIM, masked CLIP style, aesthetic score, face-detected rate."""

from magicapture_pipeline.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
