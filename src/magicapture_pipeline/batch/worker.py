"""One concept of a batch: its own Kedro session running ``customize``, in the calling process.

The local engine runs ``python -m magicapture_pipeline.batch.worker JOB.json`` (a fresh process per
attempt); the Ray engine calls :func:`execute_job` inside a Ray worker (``max_calls=1``: a fresh
process per task). Both leave the same files in the concept's state folder
``data/08_reporting/batch/<batch-id>/<concept>/``:

* ``attempts``: how many times this concept was started (a retry reads and increments it);
* ``progress.json``: the running stage (written by ``hooks/concept.py``'s ``ProgressHook``);
* ``result.json``: the outcome (see :func:`execute_job`).

Attempt 1 starts from scratch: after the run's parameter check (typed sections and path rules,
``config/paths.py``) it removes the concept's old training checkpoints, only ``checkpoint-N``
folders the project wrote (under the concept's run lock, so never those of a live run), and
trains with ``resume: false``. A later attempt (the worker died: killed, out of memory, node
lost) runs with ``resume: true`` and continues from the newest checkpoint of each stage; its
earlier MLflow run, left RUNNING by the dead worker, is marked KILLED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from magicapture_pipeline.batch.manifest import set_nested
from magicapture_pipeline.core.atomic import write_json
from magicapture_pipeline.tracking.batches import mark_dead_runs, session_run_id
from magicapture_pipeline.tracking.logged import BATCH_ID_ENV

logger = logging.getLogger(__name__)

TRAINING_STAGES = ("stage_one", "stage_two")
MAX_REASON = 4000


def next_attempt(state_dir: Path) -> int:
    """Increment and return the concept's attempt counter."""
    counter = state_dir / "attempts"
    previous = int(counter.read_text()) if counter.is_file() else 0
    write_json(counter, previous + 1)
    return previous + 1


def describe_failure(error: BaseException) -> str:
    """``Type: message`` (a validation failure's message has one line per offending file)."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _check_run(project: Path, params: dict[str, Any]) -> None:
    """The run's parameter check (typed sections and path rules), before anything is cleared."""
    from kedro.framework.project import pipelines

    from magicapture_pipeline.config.sections import check_parameters, sections_read_by

    sections = sections_read_by(pipelines["customize"].inputs())
    where = "kedro run --pipelines=customize; nothing was run or cleared"
    check_parameters(params, sections, where, project=project)


def _clear_checkpoints(project: Path, concept: str, params: dict[str, Any]) -> None:
    """Remove the concept's old checkpoints: only ``checkpoint-N`` folders the project wrote
    (``core.training.checkpoints.clear_checkpoints``), in folders the parameter check accepted."""
    from magicapture_pipeline.concepts import ConceptLock
    from magicapture_pipeline.core.training.checkpoints import clear_checkpoints

    with ConceptLock(project, concept, note="batch: clearing old checkpoints"):
        for stage in TRAINING_STAGES:
            folder = (params.get(stage) or {}).get("checkpoint_dir")
            if folder:
                removed = clear_checkpoints(project / folder)
                if removed:
                    logger.info("Fresh attempt: removed %d old checkpoint(s) in %s",
                                len(removed), folder)


def _outcome(context: Any, succeeded: bool) -> dict[str, Any]:
    from magicapture_pipeline.tracking.catalog import dataset_path

    catalog = context.catalog
    concept_dir = dataset_path(catalog, "concept")
    outcome: dict[str, Any] = {
        "concept_dir": str(concept_dir) if concept_dir and concept_dir.is_dir() else None,
        "registered_version": None,
        "registered_run_id": None,
    }
    if succeeded and catalog.exists("registered_model"):
        record = catalog.load("registered_model")
        if record.get("registered"):
            outcome["registered_version"] = record.get("version")
            outcome["registered_run_id"] = record.get("run_id")
    return outcome


def _threads(count: int | None) -> None:
    if count:
        import torch

        torch.set_num_threads(max(1, int(count)))


def execute_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one concept's ``customize`` session here and return (and write) its result.

    Args:
        job: ``name``, ``runtime_params``, ``project``, ``env``, ``batch_id``, ``state_dir`` and
            optionally ``threads`` (torch threads for this process).

    Returns:
        ``{"name", "status" ("succeeded"/"failed"), "reason", "mlflow_run_id",
        "registered_version", "concept_dir", "attempts", "wall_s", "peak_rss_mb", "session_id"}``
        (``peak_rss_mb``: the peak resident memory of this process).
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from magicapture_pipeline.hooks.concept import PROGRESS_ENV

    started = time.time()
    project = Path(job["project"]).resolve()
    state_dir = Path(job["state_dir"])
    attempt = next_attempt(state_dir)
    os.environ[PROGRESS_ENV] = str(state_dir / "progress.json")
    os.environ[BATCH_ID_ENV] = job["batch_id"]
    os.chdir(project)
    _threads(job.get("threads"))
    runtime = json.loads(json.dumps(job["runtime_params"]))
    resume = attempt > 1
    for stage in TRAINING_STAGES:
        set_nested(runtime, f"{stage}.resume", resume)
    result: dict[str, Any] = {"name": job["name"], "status": "failed", "reason": None,
                              "attempts": attempt, "mlflow_run_id": None,
                              "registered_version": None, "concept_dir": None}
    # Kedro's rich log goes to stdout; keep stdout for the engines' own use.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            bootstrap_project(project)
            with KedroSession.create(
                project_path=project, env=job["env"], runtime_params=runtime
            ) as session:
                result["session_id"] = session.session_id
                context = session.load_context()
                params = dict(context.params)
                _check_run(project, params)
                if resume:
                    mark_dead_runs(params, project, job["batch_id"])
                else:
                    _clear_checkpoints(project, job["name"], params)
                try:
                    session.run(pipeline_names=["customize"])
                    result["status"] = "succeeded"
                except Exception as error:  # noqa: BLE001 - reported, never raised
                    result["reason"] = describe_failure(error)
                    logger.error("Concept %s failed:\n%s", job["name"], traceback.format_exc())
                outcome = _outcome(context, result["status"] == "succeeded")
                result["concept_dir"] = outcome["concept_dir"]
                result["registered_version"] = outcome["registered_version"]
                result["mlflow_run_id"] = outcome["registered_run_id"] or session_run_id(
                    params, project, session.session_id
                )
        except Exception as error:  # noqa: BLE001 - a session that could not even start
            result["reason"] = result["reason"] or describe_failure(error)
            logger.error("Concept %s could not run:\n%s", job["name"], traceback.format_exc())
    result["wall_s"] = round(time.time() - started, 3)
    # peak resident memory of this worker process (Linux reports KiB)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_json(state_dir / "result.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m magicapture_pipeline.batch.worker JOB.json``: run the job, exit 0 when done.

    The exit code says whether the worker finished (0, whatever the concept's outcome, which is in
    ``result.json``); a worker that dies leaves no result and the engine retries it.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m magicapture_pipeline.batch.worker JOB.json\n")
        return 2
    execute_job(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
