"""A stand-in for the Kedro session in batch worker processes (tests/batch/test_batch_outcomes.py).

Put on ``PYTHONPATH``, it replaces ``KedroSession`` and ``bootstrap_project`` in every process of
the test, the real worker processes included, so that the real engine, worker, retry and summary
run around a session whose outcome each concept's name decides:

* ``good-*``: the run succeeds;
* ``broken-*``: the run raises (a failed concept, never retried);
* ``flaky-*``: the first attempt writes ``checkpoint-1`` into ``<checkpoint_dir>`` and dies by
  SIGKILL, as a killed worker does; a later attempt resumes from it;
* ``hold-*``: the first attempt writes ``checkpoint-1`` and waits (for its Ray node to be killed);
  a later attempt resumes from it.
* ``hang-*``: writes ``checkpoint-1``, then hangs: SIGTERM (a stop) makes it hang while closing,
  as a worker whose close never ends; only SIGKILL ends it.

Every ``run`` appends ``{concept, pid, resume, found, node}`` to ``$STANDIN_CALLS`` (JSON lines;
``node``: the Ray node id inside a Ray worker, else None).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import kedro.framework.session as _session
import kedro.framework.startup as _startup


class _Catalog:
    def get(self, name):  # noqa: ANN001, ANN201
        return None

    def exists(self, name):  # noqa: ANN001, ANN201
        return False


class _Context:
    def __init__(self, params: dict) -> None:
        self.params = params
        self.catalog = _Catalog()


class StandInSession:
    def __init__(self, project_path, runtime_params) -> None:  # noqa: ANN001
        self.project = Path(project_path)
        self.params = {**runtime_params, "tracking": {"enabled": False}}
        self.session_id = f"standin-{os.getpid()}"

    @classmethod
    def create(cls, project_path=None, env=None, runtime_params=None, **_):  # noqa: ANN001, ANN206
        return cls(project_path, runtime_params or {})

    def __enter__(self) -> StandInSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def load_context(self) -> _Context:
        # the worker's parameter check reads the project's pipelines (which the stand-in's
        # bootstrap does not register) and the full parameter sections: not this stand-in's
        for name in ("__main__", "magicapture_pipeline.batch.worker"):  # -m runs it as __main__
            if hasattr(sys.modules.get(name), "_check_run"):
                sys.modules[name]._check_run = lambda *_: None
        return _Context(self.params)

    def run(self, pipeline_names=None) -> None:  # noqa: ANN001
        name = self.params["concept"]
        folder = self.project / self.params["stage_one"]["checkpoint_dir"]
        resume = [self.params[s]["resume"] for s in ("stage_one", "stage_two")]
        found = sorted(p.name for p in folder.glob("checkpoint-*")) if folder.is_dir() else []
        node = None
        ray = sys.modules.get("ray")  # a Ray worker has imported it; importing costs 0.5 CPU s
        if ray is not None and ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
        with open(os.environ["STANDIN_CALLS"], "a") as calls:
            calls.write(json.dumps({"concept": name, "pid": os.getpid(), "resume": resume,
                                    "found": found, "node": node}) + "\n")
        if name.startswith("broken"):
            raise ValueError(f"{name}: no face found in source photo 3")
        if name.startswith("flaky") and not found:
            (folder / "checkpoint-1").mkdir(parents=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if name.startswith("hang"):
            (folder / "checkpoint-1").mkdir(parents=True, exist_ok=True)
            signal.signal(signal.SIGTERM, lambda *_: time.sleep(3600))  # closes forever
            time.sleep(3600)
        if name.startswith("hold") and not found:
            (folder / "checkpoint-1").mkdir(parents=True)
            time.sleep(300)
            raise RuntimeError(f"{name}: its node was not killed")


_session.KedroSession = StandInSession
_startup.bootstrap_project = lambda *a, **k: None
