"""Project pipelines.

Every folder under ``pipelines/`` is discovered by ``find_pipelines``; ``customize`` is the main
job, the whole MagiCapture chain in order. The chain is the same in every env: what differs is
configuration (in the ``demo`` env the raw-input datasets are the public-domain sample photos,
written on first load; see ``conf/demo/catalog_preprocess.yml``).
"""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The order of the main job; a stage missing from ``pipelines/`` is simply left out.
CUSTOMIZE_CHAIN = (
    "preprocess",
    "train_stage_one",
    "train_stage_two",
    "generate",
    "postprocess",
    "evaluate",
    "register",
)


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    pipelines = find_pipelines(raise_errors=True)
    chain = [pipelines[name] for name in CUSTOMIZE_CHAIN if name in pipelines]
    pipelines["customize"] = sum(chain, Pipeline([]))
    pipelines["__default__"] = pipelines["customize"]
    return pipelines
