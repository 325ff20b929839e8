"""Wiring of the ``train_stage_two`` pipeline."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.train_stage_two.nodes import train_stage_two


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
                ],
                outputs=["concept", "stage_two_history", "attention_heatmaps"],
                name="train_stage_two",
            )
        ]
    )
