"""What the tracking hook reads from the Kedro catalog, and the one dataset it adds to it.

The run id reaches the ``register`` node as the dataset ``mlflow_run`` (``{"run_id",
"tracking_uri", "experiment_id", "project_path"}``) that the hook adds to the catalog before the
run when a node asks for it (:func:`add_run_dataset`); the data flow is visible in the pipeline
instead of hiding in a global. :func:`dataset_path` finds the local file or folder a dataset
wrote, so artifacts are logged from what the catalog saved (the batch worker uses it too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RUN_DATASET = "mlflow_run"


def add_run_dataset(pipeline: Any, catalog: Any, run_info: dict[str, Any]) -> None:
    """Put ``run_info`` in the catalog as ``mlflow_run`` when a node of ``pipeline`` reads it."""
    if RUN_DATASET in pipeline.inputs():
        catalog[RUN_DATASET] = run_info


def load_or(catalog: Any, name: str, default: Any) -> Any:
    """``catalog.load(name)``, or ``default`` when the catalog has no such entry."""
    try:
        return catalog.load(name) if name in catalog else default
    except Exception:  # noqa: BLE001 - a catalog without parameters
        return default


def tracked_files(catalog: Any, name: str) -> list[Path] | None:
    """The files a dataset names for the run (its ``tracked_files()``, e.g. an export's model
    card but not its weights), or None when it names none: then its file or folder is logged."""
    try:
        dataset = catalog.get(name)
    except Exception:  # noqa: BLE001 - a catalog without the entry
        return None
    picked = getattr(dataset, "tracked_files", None)
    return [Path(p) for p in picked()] if callable(picked) else None


def dataset_path(catalog: Any, name: str) -> Path | None:
    """The local file or folder a catalog dataset writes, or None when it has none."""
    try:
        dataset = catalog.get(name)
    except Exception:  # noqa: BLE001 - a catalog without the entry
        return None
    if dataset is None:
        return None
    location = None
    if getattr(dataset, "_version", None) is not None and hasattr(dataset, "_get_save_path"):
        try:
            location = dataset._get_save_path()
        except Exception:  # noqa: BLE001 - not saved yet
            location = None
    for attribute in ("_filepath", "_path", "filepath", "path", "_directory", "directory"):
        if location is None:
            location = getattr(dataset, attribute, None)
    if location is None:
        try:
            description = dataset._describe()
            location = description.get("filepath") or description.get("path")
        except Exception:  # noqa: BLE001 - datasets without a description
            location = None
    if location is None or callable(location):
        return None
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        return None  # remote storage: nothing local to log
    return Path(text.removeprefix("file://"))

