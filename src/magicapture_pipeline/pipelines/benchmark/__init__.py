"""``benchmark``: baselines and ablations trained, sampled and scored like Table 1."""

from magicapture_pipeline.pipelines.benchmark.pipeline import create_pipeline

__all__ = ["create_pipeline"]
