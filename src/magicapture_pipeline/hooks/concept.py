"""Kedro hooks that make a concept the unit of a run: its run lock and a progress file.

* :class:`ConceptLockHook` takes ``data/.locks/<concept>.lock`` before any node runs (and before
  the MLflow run starts: ``tryfirst``) and gives it back when the run ends, failed or not. A second
  run of a concept that is already running stops there with the holder's pid and host, in one line
  on stderr when the refusal ends ``kedro run``.
* :class:`ProgressHook` writes ``{"state", "stage", "node", ...}`` to the JSON file named by
  ``$MAGICAPTURE_PROGRESS_FILE`` at each node, for the batch runner's live table; without the
  variable it does nothing. Pipelines stay unaware of batches.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

from magicapture_pipeline.concepts import ConceptLock, ConceptLockedError, validate_concept_name
from magicapture_pipeline.core import atomic

logger = logging.getLogger(__name__)

PROGRESS_ENV = "MAGICAPTURE_PROGRESS_FILE"
CONCEPT_PARAM = "params:concept"


def _concept(catalog: Any) -> str | None:
    try:
        return str(catalog.load(CONCEPT_PARAM)) if CONCEPT_PARAM in catalog else None
    except Exception:  # noqa: BLE001 - a catalog without parameters
        return None


def _refusal_in_one_line() -> None:
    """Should the refusal end the process uncaught (``kedro run``), print it as one line.

    Kedro's rich traceback of a refused run was 173 lines around the one that matters (who holds
    the lock). In-process callers (the batch worker, tests) still catch the exception as before.
    """
    previous = sys.excepthook
    if getattr(previous, "one_line_refusal", False):
        return

    def excepthook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if isinstance(error, ConceptLockedError):
            sys.stderr.write(f"Run refused: {error}\n")
        else:
            previous(kind, error, tb)

    excepthook.one_line_refusal = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


class ConceptLockHook:
    """One live run per concept (see :class:`magicapture_pipeline.concepts.ConceptLock`)."""

    def __init__(self) -> None:
        self._lock: ConceptLock | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """Refuse a bad ``--params=concept=...`` as soon as the context exists (no I/O yet).

        (The catalog checks it too, through ``${valid_concept:...}``; a runtime parameter replaces
        ``params:concept`` as given, so the parameters need this check.) The merged parameters
        (files + ``--params``) are read from the config loader, not ``context.params``: reading
        those here would make Kedro validate every registered pipeline's node parameters, which
        imports every pipeline's nodes (torch, MLflow's pyfunc) before the run has scoped it to
        the pipelines it runs (``pipeline_registry.ProjectPipelines``).
        """
        try:
            parameters = context.config_loader["parameters"]
        except MissingConfigException:  # no parameter files: Kedro falls back to --params
            parameters = context.params
        concept = parameters.get("concept")
        if concept is not None:
            validate_concept_name(concept)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], catalog: Any) -> None:
        concept = _concept(catalog)
        if concept is None:
            return
        project = Path(run_params.get("project_path") or Path.cwd())
        note = f"kedro session {run_params.get('run_id') or run_params.get('session_id') or ''}"
        try:
            self._lock = ConceptLock(project, concept, note=note.strip()).acquire()
        except ConceptLockedError:
            _refusal_in_one_line()
            raise

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()


def write_progress(path: str | Path, **fields: Any) -> None:
    """Replace the progress file atomically (a reader never sees half a JSON)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), **fields}
    atomic.write_json(path, record, indent=None)


class ProgressHook:
    """Writes the running stage (a pipeline of the ``customize`` chain) to the progress file."""

    def __init__(self) -> None:
        self._stages: dict[str, str] = {}

    @staticmethod
    def _path() -> str | None:
        return os.environ.get(PROGRESS_ENV) or None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        path = self._path()
        if path is None:
            return
        from kedro.framework.project import pipelines

        from magicapture_pipeline.pipelines import CUSTOMIZE_CHAIN

        self._stages = {}
        for stage in CUSTOMIZE_CHAIN:
            try:
                for node in pipelines[stage].nodes:
                    self._stages[node.name] = stage
            except KeyError:
                continue
        write_progress(path, state="running", stage="starting", node=None)

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        path = self._path()
        if path is not None:
            stage = self._stages.get(node.name, "other")
            write_progress(path, state="running", stage=stage, node=node.name)

    @hook_impl
    def after_pipeline_run(self) -> None:
        path = self._path()
        if path is not None:
            write_progress(path, state="done", stage="done", node=None)

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        path = self._path()
        if path is not None:
            write_progress(path, state="failed", stage="failed", node=None, error=str(error)[:2000])
