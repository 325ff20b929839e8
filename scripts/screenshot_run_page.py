"""Screenshot an MLflow run page in headless Chromium and check that it shows the logged model.

Not part of the test suite (it needs a browser: Debian's ``chromium``). Rerun after a demo::

    make demo
    .venv/bin/python scripts/screenshot_run_page.py --experiment magicapture-demo

It starts ``mlflow server`` on a free 127.0.0.1 port for a local store (or uses an http tracking
URI as it is), finds the experiment's latest run, renders the run page, the run's model-metrics tab
and the experiment's model list with ``chromium --headless``, writes PNG screenshots, and checks
the rendered DOM for the logged model's name and the loss metric names. The validation images
logged during training with their step (issue 20: ``images/<stage>_validation~<name>+step+<n>+...``)
are shown by the run's artifact view of ``images/``, screenshot as ``run_validation_images.png``
with the DOM checked for every validated stage's grid; the step slider of MLflow's image charts
needs a browser that waits for the charts (Playwright, not installed here: FINDINGS.md). Exit
status 1 when a check fails. The server it started is stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(backend: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PATH": f"{mlflow.parent}:{os.environ.get('PATH', '')}"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return process, url
        except OSError:
            time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not answer /health within 180 s")


def chromium(*args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    done = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1500,2400",
            "--virtual-time-budget=40000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done.stdout


def validation_image_failures(client: MlflowClient, run_id: str, dom: str) -> list[str]:
    """Each stage that logged validation images (``<stage>_validation/<name>`` with a step) has
    its grid in the artifact view's DOM."""
    files = [f.path for f in client.list_artifacts(run_id, "images")]
    logged = sorted({p.split("/", 1)[1].split("~", 1)[0] for p in files if "_validation~" in p})
    stages = [s for s in logged if s.endswith("_validation")]
    if not stages:
        return ["the run logged no validation images (images/<stage>_validation~...)"]
    steps = {s: sorted({p.split("+step+")[1].split("+")[0] for p in files
                        if f"/{s}~grid+step+" in p}, key=int) for s in stages}  # fmt: skip
    for stage, found in steps.items():
        print(f"{stage}: grids at steps {', '.join(found) or 'none'}")  # noqa: T201
    return [f"artifact view does not show {s}~grid" for s in stages if f"{s}~grid" not in dom]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}",
    )
    parser.add_argument("--experiment", default="magicapture-demo")
    parser.add_argument("--out", default="data/08_reporting/mlflow_ui")
    args = parser.parse_args(argv)
    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.tracking_uri}")
    [run] = client.search_runs(
        [experiment.experiment_id], order_by=["start_time DESC"], max_results=1
    )
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    names = sorted({m.name for m in models if m.source_run_id == run.info.run_id})
    process, url = (None, args.tracking_uri.rstrip("/"))
    if not args.tracking_uri.startswith("http"):
        process, url = start_ui(args.tracking_uri)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = f"{url}/#/experiments/{experiment.experiment_id}"
    # MLflow 3.17.2's UI takes the view from its GenAI / Model training switch (remembered in the
    # browser, GenAI by default) before the experiment's mlflow.experimentKind tag; a fresh
    # headless browser gets the model-training view from the URL.
    view = "?workflowType=machine_learning"
    pages = {
        "run_overview": f"{base}/runs/{run.info.run_id}{view}",
        "run_model_metrics": f"{base}/runs/{run.info.run_id}/model-metrics{view}",
        "run_artifacts": f"{base}/runs/{run.info.run_id}/artifacts{view}",
        "run_validation_images": f"{base}/runs/{run.info.run_id}/artifacts/images{view}",
        "experiment_runs": f"{base}/runs{view}",
        "experiment_models": f"{base}/models{view}",
    }
    failures = []
    try:
        for name, page in pages.items():
            chromium(f"--screenshot={out / f'{name}.png'}", page)
            print(f"{name}: {out / f'{name}.png'}  ({page})")  # noqa: T201
        dom = chromium("--dump-dom", pages["run_overview"])
        if not names:
            failures.append("the run has no logged model")
        for model in names:
            if model not in dom:
                failures.append(f"run page does not show logged model {model!r}")
        metrics_dom = chromium("--dump-dom", pages["run_model_metrics"])
        # charts are grouped by the prefix before "/" (stage_one, stage_two)
        groups = {k.split("/", 1)[0] for k in run.data.metrics if "loss" in k}
        missing = sorted(g for g in groups if g not in metrics_dom)
        if not groups or missing:
            failures.append(f"model-metrics tab lacks the loss chart groups {missing or groups}")
        images_dom = chromium("--dump-dom", pages["run_validation_images"])
        failures += validation_image_failures(client, run.info.run_id, images_dom)
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    for failure in failures:
        print(f"FAILED: {failure}")  # noqa: T201
    print("ok" if not failures else f"{len(failures)} check(s) failed")  # noqa: T201
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
