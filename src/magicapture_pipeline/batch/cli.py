"""``python -m magicapture_pipeline.batch MANIFEST [--engine local|ray] [--workers N]``.

Runs every concept of the manifest (see :mod:`.manifest`) as its own Kedro session, prints a live
table, writes ``data/08_reporting/batch/<batch-id>.json`` and logs it as one MLflow run in the
experiment ``magicapture-batches``. Exit code: 0 when every concept succeeded, 1 when any failed,
2 when the manifest or the options are unusable (nothing ran): the manifest's bounds, its keys
and values against the env's configs and the batch id are checked first (:mod:`.preflight`).
SIGTERM or Ctrl-C stops the workers (their runs end KILLED, locks released), writes the summary
with those concepts ``stopped`` and ``stopped_by`` set, and then the driver dies by that signal.
A worker still running ``--stop-grace-s`` seconds (default 30) after the stop is SIGKILLed (local)
or force-cancelled (Ray: ``ray.cancel(force=True)``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from magicapture_pipeline.batch.engines import (
    STOP_GRACE_S,
    BatchStopped,
    LocalEngine,
    RayEngine,
)
from magicapture_pipeline.batch.manifest import ManifestError, load_manifest
from magicapture_pipeline.batch.preflight import check_batch_id, check_manifest
from magicapture_pipeline.batch.summary import LiveTable, build_summary
from magicapture_pipeline.tracking.batches import log_summary_run

logger = logging.getLogger(__name__)

BATCH_DIR = Path("data/08_reporting/batch")


def new_batch_id() -> str:
    """``YYYYMMDD-HHMMSS-<6 hex>`` (sortable, unique enough for one project)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m magicapture_pipeline.batch",
        description="Train the concepts of a manifest, each as its own Kedro session.",
    )
    parser.add_argument("manifest", type=Path, help="YAML or CSV manifest of concepts")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--workers", type=int, default=1, help="concepts running at once")
    parser.add_argument("--env", default="demo", help="Kedro env of every concept")
    parser.add_argument("--retries", type=int, default=2, help="retries of a worker that died")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads per worker (default: CPUs / workers; 1 on a busy shared machine)",
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster to join (default $RAY_ADDRESS, else local)"
    )
    parser.add_argument(
        "--stop-grace-s", type=float, default=STOP_GRACE_S,
        help="after SIGTERM/Ctrl-C, seconds a worker gets to close its run before SIGKILL "
        "(Ray: ray.cancel(force=True))",
    )
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="the Kedro project")
    parser.add_argument("--batch-id", default=None, help="default: time + random suffix")
    return parser.parse_args(argv)


def _tracking_uri(project: Path, env: str) -> str | None:
    """The env's tracking URI (as the concept runs resolve it), or None when tracking is off."""
    from kedro.config import OmegaConfigLoader

    from magicapture_pipeline.settings import CONFIG_LOADER_ARGS
    from magicapture_pipeline.tracking.uris import resolve_tracking_uri, tracking_disabled_by_env

    if tracking_disabled_by_env():
        return None
    loader = OmegaConfigLoader(
        str(project / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env}
    )
    tracking = loader["parameters"].get("tracking") or {}
    if tracking.get("enabled") is False:
        return None
    return resolve_tracking_uri(project, tracking.get("tracking_uri"))


def run_batch(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Run the manifest's concepts; returns the summary and where it was written."""
    project = args.project.resolve()
    batch_id = check_batch_id(args.batch_id) if args.batch_id else new_batch_id()
    manifest = load_manifest(args.manifest)
    check_manifest(manifest, args.manifest, project, args.env)  # before any folder or worker
    state_root = project / BATCH_DIR / batch_id
    jobs = []
    for spec in manifest.concepts:
        state_dir = state_root / spec.name
        state_dir.mkdir(parents=True, exist_ok=True)
        jobs.append({
            "name": spec.name, "runtime_params": spec.runtime_params(), "project": str(project),
            "env": args.env, "batch_id": batch_id, "state_dir": str(state_dir),
        })
    if args.engine == "ray":
        engine: LocalEngine | RayEngine = RayEngine(
            args.workers, args.retries, args.address, threads=args.threads,
            stop_grace_s=args.stop_grace_s,
        )
        engine.start()
    else:
        engine = LocalEngine(
            args.workers, args.retries, threads=args.threads, stop_grace_s=args.stop_grace_s
        )
    sys.stdout.write(
        f"batch {batch_id}: {len(jobs)} concept(s), engine {engine.name}, "
        f"{engine.workers} worker(s), env {args.env}; logs in {state_root}\n"
    )
    started = time.time()
    try:
        with LiveTable({job["name"]: Path(job["state_dir"]) for job in jobs}) as table:
            results = engine.run(jobs, table.poll)
    finally:
        engine.close()
    summary = build_summary(
        batch_id, results, engine=engine.name, workers=engine.workers,
        wall_s=time.time() - started, env=args.env, manifest=str(args.manifest),
        engine_info=engine.describe(),
    )
    summary["stopped_by"] = getattr(engine, "stopped_by", None)
    summary_file = project / BATCH_DIR / f"{batch_id}.json"
    summary_file.write_text(json.dumps(summary, indent=2))
    uri = _tracking_uri(project, args.env)
    if uri is not None:
        try:
            summary["mlflow_run_id"] = log_summary_run(summary, summary_file, uri)
            summary_file.write_text(json.dumps(summary, indent=2))
        except Exception as error:  # noqa: BLE001 - the batch's own results are already on disk
            logger.warning("Batch summary not logged to MLflow: %s", error)
    return summary, summary_file


def main(argv: list[str] | None = None) -> int:
    """The command line; see the module docstring for exit codes."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    args = parse_args(argv)
    if args.workers < 1 or args.retries < 0 or (args.threads is not None and args.threads < 1):
        sys.stderr.write("--workers and --threads must be >= 1, --retries >= 0\n")
        return 2
    signal.signal(signal.SIGTERM, _stop)  # Slurm, Kubernetes, `timeout`: stop the workers
    # Ctrl-C or `kill -INT` stops the batch the same way, also when the driver was started with
    # SIGINT ignored (a script's `cmd &` job): Python then never raises KeyboardInterrupt
    signal.signal(signal.SIGINT, _stop)
    try:
        summary, summary_file = run_batch(args)
    except ManifestError as error:
        sys.stderr.write(f"manifest refused:\n{error}\n")
        return 2
    for concept in summary["concepts"]:
        if concept["status"] != "succeeded":
            status, name = concept["status"].upper(), concept["name"]
            sys.stdout.write(f"\n{status} {name} (attempts {concept['attempts']}):\n")
            sys.stdout.write(f"  {concept['reason']}\n".replace("\n", "\n  ").rstrip() + "\n")
    sys.stdout.write(
        f"\n{summary['succeeded']} succeeded, {summary['failed']} failed in "
        f"{summary['wall_s']:.1f} s; summary: {summary_file}\n"
    )
    if summary.get("stopped_by"):  # die by the signal, as a scheduler expects
        sys.stdout.flush()
        signum = signal.Signals[summary["stopped_by"]]
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return 0 if summary["failed"] == 0 else 1


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT: the engine stops its workers and the summary marks their concepts
    ``stopped``."""
    signal.signal(signum, signal.SIG_IGN)  # once is enough; the workers are being stopped
    raise BatchStopped(signum)


if __name__ == "__main__":
    raise SystemExit(main())
