"""Project pipelines.

Every package under ``pipelines/`` that exposes ``create_pipeline`` is registered under its folder
name; ``customize`` is the main job, the whole MagiCapture chain in order. The chain is the same in
every env: what differs is configuration (in the ``demo`` env the raw-input datasets are the
public-domain sample photos, written on first load; see ``conf/demo/catalog_preprocess.yml``).

Discovery is done here rather than with ``kedro.framework.project.find_pipelines``: under
``kedro run --pipelines=customize`` Kedro 1.7 asks ``find_pipelines`` for the requested names only,
and ``customize`` is a composition, not a folder.
"""

import importlib
import pkgutil

from kedro.pipeline import Pipeline

import magicapture_pipeline.pipelines as pipelines_package
from magicapture_pipeline.pipelines import CUSTOMIZE_CHAIN


def discover_pipelines() -> dict[str, Pipeline]:
    """Import every ``pipelines/<name>`` package and call its ``create_pipeline``."""
    found: dict[str, Pipeline] = {}
    for info in pkgutil.iter_modules(pipelines_package.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{pipelines_package.__name__}.{info.name}")
        found[info.name] = module.create_pipeline()
    return found


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    pipelines = discover_pipelines()
    missing = [name for name in CUSTOMIZE_CHAIN if name not in pipelines]
    if missing:
        raise ImportError(f"the main job needs the pipelines {missing}; none is in pipelines/")
    pipelines["customize"] = sum((pipelines[name] for name in CUSTOMIZE_CHAIN), Pipeline([]))
    pipelines["__default__"] = pipelines["customize"]
    return pipelines
