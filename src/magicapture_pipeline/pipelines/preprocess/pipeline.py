"""Wiring of the ``preprocess`` pipeline: faces -> validation report -> accepted training set."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.preprocess.nodes import (
    accept_training_set,
    preprocess_faces,
    validate_face_set,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=preprocess_faces,
                inputs=["source_images", "reference_images", "params:preprocess"],
                outputs=["face_metadata", "face_crops", "face_masks", "mask_overlays"],
                name="preprocess_faces",
            ),
            Node(
                func=validate_face_set,
                inputs=["face_metadata", "params:validation"],
                outputs="validation_report",
                name="validate_face_set",
            ),
            Node(
                func=accept_training_set,
                inputs=["validation_report", "face_metadata", "params:preprocess"],
                outputs="training_set",
                name="accept_training_set",
            ),
        ]
    )
