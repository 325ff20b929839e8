"""Wiring of the ``promote`` pipeline (run on its own, never part of ``customize``)."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.promote.nodes import apply_promotion


def create_pipeline(**kwargs) -> Pipeline:
    """``--params=action=...,model_name=...,model_version=...`` -> ``promotion_record``."""
    return Pipeline(
        [
            Node(
                func=apply_promotion,
                inputs=[
                    "params:action",
                    "params:model_name",
                    "params:model_version",
                    "params:registry",
                    "mlflow_run",
                ],
                outputs="promotion_record",
                name="apply_promotion",
            )
        ]
    )
