"""Wiring of the ``register`` pipeline (last stage of ``customize``)."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.register.nodes import register_concept


def create_pipeline(**kwargs) -> Pipeline:
    """``concept`` + ``metrics`` (+ sampling settings, request limits) -> ``registered_model``.

    ``mlflow_run`` (the run id of this ``kedro run``) is put in the catalog by the tracking hook.
    """
    return Pipeline(
        [
            Node(
                func=register_concept,
                inputs=[
                    "concept",
                    "base_model",
                    "metrics",
                    "mlflow_run",
                    "params:registry",
                    "params:generation",
                    "params:serving",
                ],
                outputs="registered_model",
                name="register_concept",
            )
        ]
    )
