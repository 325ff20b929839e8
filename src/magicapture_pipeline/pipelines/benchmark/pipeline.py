"""Wiring of the ``benchmark`` pipeline (not part of ``customize``: run it on its own)."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.benchmark.nodes import run_benchmark


def create_pipeline(**kwargs) -> Pipeline:
    """Accepted inputs + base model -> per-variant results and the Table-1-shaped comparison."""
    return Pipeline(
        [
            Node(
                func=run_benchmark,
                inputs=[
                    "training_set",
                    "face_crops",
                    "face_masks",
                    "base_model",
                    "params:stage_one",
                    "params:stage_two",
                    "params:generation",
                    "params:postprocess",
                    "params:evaluation",
                    "params:benchmark",
                ],
                outputs=[
                    "benchmark_results",
                    "benchmark_table_csv",
                    "benchmark_table_md",
                    "benchmark_grids",
                ],
                name="run_benchmark",
            )
        ]
    )
