"""A real ``KedroSession`` run for the stop-signal tests (tests/tracking/test_stop_signals.py); not
a test.

``python stop_child.py PROJECT CONCEPT`` runs, in the project copy PROJECT with the project's real
settings (every hook of ``settings.HOOKS``: the concept lock, MLflow tracking, the stop hook), a
two-node pipeline: ``work`` writes ``data/06_models/<CONCEPT>/checkpoints/checkpoint-N/state.json``
atomically every 0.05 s and prints ``checkpoint N`` (flushed) for up to 120 s; ``swallow`` is never
reached. The only stand-in is the pipeline (the training chain needs minutes on this machine);
the session, the hooks, the MLflow store, the lock file and the signals are the real ones.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.pipeline import Node, Pipeline

from magicapture_pipeline.core import atomic


def work(concept: str) -> int:
    folder = Path("data/06_models") / concept / "checkpoints"
    began = time.time()
    step = 0
    while time.time() - began < 120:
        step += 1
        atomic.write_json(folder / f"checkpoint-{step}" / "state.json", {"step": step})
        print(f"checkpoint {step}", flush=True)
        time.sleep(0.05)
    return step


def main() -> None:
    project, concept = Path(sys.argv[1]), sys.argv[2]
    bootstrap_project(project)
    pipelines._content = {  # noqa: SLF001 - the one stand-in, see the docstring
        "__default__": Pipeline([Node(work, "params:concept", "steps", name="work")])
    }
    pipelines._is_data_loaded = True  # noqa: SLF001
    with KedroSession.create(project_path=project, runtime_params={"concept": concept}) as session:
        session.run()


if __name__ == "__main__":
    main()
