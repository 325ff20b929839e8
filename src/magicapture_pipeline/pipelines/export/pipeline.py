"""Wiring of the ``export`` pipeline (not in ``customize``: see docs/architecture.md)."""

from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.pipelines.export.nodes import export_concept


def create_pipeline(**kwargs) -> Pipeline:
    """``concept_export_source`` (+ the registry when ``export.alias`` / ``model_version`` is
    set) -> ``concept_export`` (the export folder, written whole).

    ``mlflow_run`` (the tracking URI of this run) is put in the catalog by the tracking hook.
    """
    return Pipeline(
        [
            Node(
                func=export_concept,
                inputs=[
                    "concept_export_source",
                    "params:concept",
                    "params:export",
                    "params:registry",
                    "params:generation",
                    "mlflow_run",
                ],
                outputs="concept_export",
                name="export_concept",
            )
        ]
    )
