"""Wiring of the ``train_stage_one`` pipeline."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.train_stage_one.nodes import (
    plot_stage_one_losses,
    prepare_base_model,
    train_stage_one,
)


def create_pipeline(**kwargs) -> Pipeline:
    """``params:model`` (once ``training_set`` is accepted) -> ``base_model``; training set +
    crops + masks -> embeddings, history, validation history and images (sampled as ``generate``
    does, scored as ``evaluate`` does)."""
    return Pipeline(
        [
            Node(
                func=prepare_base_model,
                inputs=["params:model", "training_set"],  # after the photos are accepted
                outputs="base_model",
                name="prepare_base_model",
            ),
            Node(
                func=train_stage_one,
                inputs=[
                    "base_model",
                    "training_set",
                    "face_crops",
                    "face_masks",
                    "params:stage_one",
                    "params:generation",
                    "params:evaluation",
                ],
                outputs=[
                    "stage_one_embeddings",
                    "stage_one_history",
                    "stage_one_validation_history",
                    "stage_one_validation_images",
                ],
                name="train_stage_one",
            ),
            Node(
                func=plot_stage_one_losses,
                inputs="stage_one_history",
                outputs="stage_one_loss_curves",
                name="plot_stage_one_losses",
            ),
        ]
    )
