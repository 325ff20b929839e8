"""``train_stage_two``: LoRA + embeddings with the three tasks, Eq. 4-8; exports the concept."""

from magicapture_pipeline.pipelines.train_stage_two.pipeline import create_pipeline

__all__ = ["create_pipeline"]
