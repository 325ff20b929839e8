"""magicapture_pipeline: MagiCapture (arXiv 2309.06895) as a Kedro project.

The method itself lives in :mod:`magicapture_pipeline.core` and imports nothing from Kedro;
``pipelines/`` is thin Kedro wiring around it, and :mod:`magicapture_pipeline.hooks` is the one
place that talks to MLflow.
"""

__version__ = "0.1.0"
