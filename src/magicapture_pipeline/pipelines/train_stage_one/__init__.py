"""``train_stage_one``: the base model, then the [V1]/[V2] embeddings alone (Eq. 4-5)."""

from magicapture_pipeline.pipelines.train_stage_one.pipeline import create_pipeline

__all__ = ["create_pipeline"]
