"""Wiring of the ``postprocess`` pipeline."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.postprocess.nodes import postprocess_generated


def create_pipeline(**kwargs) -> Pipeline:
    """``generated_images`` -> ``postprocessed_images`` + ``postprocess_report``."""
    return Pipeline(
        [
            Node(
                func=postprocess_generated,
                inputs=["generated_images", "params:postprocess"],
                outputs=["postprocessed_images", "postprocess_report"],
                name="postprocess_generated",
            )
        ]
    )
