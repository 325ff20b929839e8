"""Wiring of the ``train_stage_two`` pipeline."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.train_stage_two.nodes import (
    plot_stage_two_losses,
    train_stage_two,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Stage one's embeddings + the training set -> concept, history and attention heatmaps."""
    return Pipeline(
        [
            Node(
                func=train_stage_two,
                inputs=[
                    "base_model",
                    "stage_one_embeddings",
                    "training_set",
                    "face_crops",
                    "face_masks",
                    "params:stage_two",
                    "params:generation",
                    "params:evaluation",
                ],
                outputs=[
                    "concept",
                    "stage_two_history",
                    "attention_heatmaps",
                    "stage_two_validation_history",
                    "stage_two_validation_images",
                ],
                name="train_stage_two",
            ),
            Node(
                func=plot_stage_two_losses,
                inputs="stage_two_history",
                outputs="stage_two_loss_curves",
                name="plot_stage_two_losses",
            ),
        ]
    )
