"""Wiring of the ``batch_generate`` pipeline."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.batch_generate.nodes import generate_batch


def create_pipeline(**kwargs) -> Pipeline:
    """``batch_prompts`` + ``params:serving`` (model URI) -> ``batch_images``, ``batch_records``.

    ``mlflow_run`` (tracking URI of this run) is put in the catalog by the tracking hook.
    """
    return Pipeline(
        [
            Node(
                func=generate_batch,
                inputs=["batch_prompts", "params:serving", "mlflow_run"],
                outputs=["batch_images", "batch_records"],
                name="generate_batch",
            )
        ]
    )
