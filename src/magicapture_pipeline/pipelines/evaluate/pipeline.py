"""Wiring of the ``evaluate`` pipeline."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.evaluate.nodes import (
    draw_concept_card,
    evaluate_generated,
    plot_metrics,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Generated (+ post-processed) images and the accepted inputs -> metrics, table, plot."""
    return Pipeline(
        [
            Node(
                func=evaluate_generated,
                inputs=[
                    "generated_images",
                    "postprocessed_images",
                    "face_crops",
                    "face_masks",
                    "training_set",
                    "concept",
                    "params:stage_two",
                    "params:evaluation",
                ],
                outputs=["metrics", "per_image_metrics"],
                name="evaluate_generated",
            ),
            Node(
                func=plot_metrics,
                inputs="per_image_metrics",
                outputs="metrics_plot",
                name="plot_metrics",
            ),
            Node(
                func=draw_concept_card,
                inputs=[
                    "training_set",
                    "face_crops",
                    "face_masks",
                    "stage_two_validation_history",
                    "stage_two_validation_images",
                    "metrics",
                    "params:generation",
                ],
                outputs="concept_card",
                name="draw_concept_card",
            ),
        ]
    )
