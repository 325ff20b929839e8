"""magicapture_pipeline: MagiCapture (arXiv 2309.06895) as a Kedro project.

The method lives in :mod:`magicapture_pipeline.core` and imports neither Kedro nor MLflow;
``pipelines/`` is thin Kedro wiring around it; only ``tracking/`` and ``serving/`` talk to MLflow.
"""

__version__ = "0.1.0"
