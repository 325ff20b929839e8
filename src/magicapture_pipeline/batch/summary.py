"""What a batch shows while it runs (the live table) and leaves behind (the summary JSON).

The summary is also logged as one MLflow run (``tracking/batches.py``).

The table is read from each concept's state folder (``attempts``, ``progress.json``,
``result.json``), so it looks the same whichever engine or machine runs the concept. On a terminal
it is redrawn in place (rich); otherwise each change is printed as one line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

CONCEPT_FIELDS = (
    "name", "status", "reason", "mlflow_run_id", "registered_version", "concept_dir", "attempts",
    "wall_s", "peak_rss_mb",
)


def concept_state(name: str, state_dir: Path) -> dict[str, Any]:
    """``{"name", "state" (queued/running/done/failed), "stage", "attempts"}`` of one concept."""
    attempts_file = state_dir / "attempts"
    attempts = int(attempts_file.read_text()) if attempts_file.is_file() else 0
    row = {"name": name, "state": "queued", "stage": "", "attempts": attempts}
    result_file = state_dir / "result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        row["state"] = {"succeeded": "done", "stopped": "stopped"}.get(result["status"], "failed")
        reason = (result.get("reason") or "").splitlines()
        row["stage"] = reason[0][:80] if reason else ""
        return row
    progress_file = state_dir / "progress.json"
    if attempts:
        row["state"] = "running"
        if progress_file.is_file():
            try:
                row["stage"] = json.loads(progress_file.read_text()).get("stage", "")
            except ValueError:
                pass
        row["stage"] = row["stage"] or "starting"
    return row


class LiveTable:
    """Shows the concepts' states: redrawn in place on a terminal, one line per change otherwise."""

    def __init__(self, states: dict[str, Path], out: TextIO | None = None) -> None:
        self.states = states
        self.out = out or sys.stdout
        self.started = time.time()
        self._last: dict[str, tuple] = {}
        self._live: Any = None

    def rows(self) -> list[dict[str, Any]]:
        return [concept_state(name, folder) for name, folder in self.states.items()]

    def _table(self, rows: list[dict[str, Any]]) -> Any:
        from rich.table import Table

        table = Table(title=f"batch: {time.time() - self.started:.0f} s")
        for column in ("concept", "state", "stage / reason", "attempts"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["name"], row["state"], str(row["stage"]), str(row["attempts"]))
        return table

    def __enter__(self) -> LiveTable:
        if self.out.isatty():
            from rich.live import Live

            self._live = Live(self._table(self.rows()), refresh_per_second=2)
            self._live.__enter__()
        return self

    def poll(self) -> None:
        rows = self.rows()
        if self._live is not None:
            self._live.update(self._table(rows))
            return
        for row in rows:
            key = (row["state"], row["stage"], row["attempts"])
            if self._last.get(row["name"]) != key:
                self._last[row["name"]] = key
                elapsed = time.time() - self.started
                self.out.write(
                    f"[{elapsed:7.1f} s] {row['name']:<24} {row['state']:<8} "
                    f"attempt {row['attempts']}  {row['stage']}\n"
                )
                self.out.flush()

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)


def build_summary(
    batch_id: str,
    results: list[dict[str, Any]],
    *,
    engine: str,
    workers: int,
    wall_s: float,
    env: str,
    manifest: str,
    engine_info: dict[str, Any],
) -> dict[str, Any]:
    """The batch's summary (the JSON written to ``data/08_reporting/batch/<batch-id>.json``)."""
    concepts = [{field: result.get(field) for field in CONCEPT_FIELDS} for result in results]
    return {
        "batch_id": batch_id,
        "engine": engine,
        "workers": workers,
        "wall_s": round(wall_s, 3),
        "env": env,
        "manifest": manifest,
        "succeeded": sum(c["status"] == "succeeded" for c in concepts),
        "failed": sum(c["status"] != "succeeded" for c in concepts),  # stopped ones included
        "stopped": sum(c["status"] == "stopped" for c in concepts),
        "engine_info": engine_info,
        "concepts": concepts,
    }
