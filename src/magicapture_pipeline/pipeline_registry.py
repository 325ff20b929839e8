"""Project pipelines.

Every package under ``pipelines/`` that exposes ``create_pipeline`` is registered under its folder
name; ``customize`` is the main job, the whole MagiCapture chain in order. The chain is the same in
every env: what differs is configuration (in the ``demo`` env the raw-input datasets are the
public-domain sample photos, written on first load; see ``conf/demo/catalog_preprocess.yml``).

Discovery is done here rather than with ``kedro.framework.project.find_pipelines``: under
``kedro run --pipelines=customize`` Kedro 1.7 asks ``find_pipelines`` for the requested names only,
and ``customize`` is a composition, not a folder.

The registry is lazy (:class:`ProjectPipelines`): the pipeline names come from the folder names,
and a pipeline's package (its nodes, and what they import: torch, diffusers, MLflow's pyfunc) is
imported only when that pipeline is asked for. ``kedro run --pipelines=preprocess`` therefore
imports neither torch nor MLflow's model code; the run reads only what it runs.
"""

import importlib
import pkgutil
from collections.abc import Iterator, Mapping

from kedro.pipeline import Pipeline

import magicapture_pipeline.pipelines as pipelines_package
from magicapture_pipeline.pipelines import CUSTOMIZE_CHAIN

MAIN_JOB = "customize"
DEFAULT = "__default__"


def pipeline_names() -> list[str]:
    """The ``pipelines/<name>`` packages, by folder name (nothing is imported)."""
    return [info.name for info in pkgutil.iter_modules(pipelines_package.__path__) if info.ispkg]


def build_pipeline(name: str) -> Pipeline:
    """Import ``pipelines/<name>`` and call its ``create_pipeline``."""
    return importlib.import_module(f"{pipelines_package.__name__}.{name}").create_pipeline()


class ProjectPipelines(Mapping[str, Pipeline]):
    """The project's pipelines by name; each is built on first access and kept.

    ``customize`` (and ``__default__``, the same object) is the sum of :data:`CUSTOMIZE_CHAIN`.

    Raises:
        ImportError: at construction, when a pipeline of the main job has no package.
    """

    def __init__(self) -> None:
        self._names = pipeline_names()
        missing = [name for name in CUSTOMIZE_CHAIN if name not in self._names]
        if missing:
            raise ImportError(f"the main job needs the pipelines {missing}; none is in pipelines/")
        self._built: dict[str, Pipeline] = {}

    def __getitem__(self, name: str) -> Pipeline:
        if name not in self._built:
            if name in (MAIN_JOB, DEFAULT):
                chain = sum((self[stage] for stage in CUSTOMIZE_CHAIN), Pipeline([]))
                self._built[MAIN_JOB] = self._built[DEFAULT] = chain
            elif name in self._names:
                self._built[name] = build_pipeline(name)
            else:
                raise KeyError(name)
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*self._names, MAIN_JOB, DEFAULT])

    def __len__(self) -> int:
        return len(self._names) + 2


def discover_pipelines() -> dict[str, Pipeline]:
    """Every ``pipelines/<name>`` package's pipeline, built now (its package imported)."""
    return {name: build_pipeline(name) for name in pipeline_names()}


def register_pipelines() -> Mapping[str, Pipeline]:
    """Register the project's pipelines (Kedro's entry point).

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects, built when first read.
    """
    return ProjectPipelines()
