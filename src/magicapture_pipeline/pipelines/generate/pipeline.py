"""Wiring of the ``generate`` pipeline."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.generate.nodes import generate_images


def create_pipeline(**kwargs) -> Pipeline:
    """``concept`` + ``base_model`` -> generated images, their records and a contact sheet."""
    return Pipeline(
        [
            Node(
                func=generate_images,
                inputs=["concept", "base_model", "params:generation"],
                outputs=["generated_images", "generation_records", "generation_grid"],
                name="generate_images",
            )
        ]
    )
