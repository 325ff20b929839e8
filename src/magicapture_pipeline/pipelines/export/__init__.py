"""``export``: a concept (folder or registered version) as diffusers + ComfyUI / A1111 files."""

from magicapture_pipeline.pipelines.export.pipeline import create_pipeline

__all__ = ["create_pipeline"]
