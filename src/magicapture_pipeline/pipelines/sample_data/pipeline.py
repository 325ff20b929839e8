"""Wiring of the ``sample_data`` pipeline."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.sample_data.nodes import build_sample_data


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=build_sample_data,
                inputs="params:sample_data",
                outputs=["sample_source_images", "sample_reference_images", "sample_manifest"],
                name="build_sample_data",
            ),
        ]
    )
