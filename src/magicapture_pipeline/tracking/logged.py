"""What one MLflow run of a ``kedro run`` holds: its tags, parameters, metrics and artifacts.

The tracking hook (``hook.py``) decides *when* to log; this module decides *what*:

* tags: git commit, Kedro env / pipelines / run id / version / runner (:func:`run_tags`), and which
  optional parts ran (:func:`option_tags`: ``magicapture.*`` tags read from ``concept``,
  ``metrics`` and post-processing reports), one tag per fact a person filters on; metrics that
  could not be computed get one short tag ``magicapture.unavailable`` (their names) and their
  reasons go to ``reports/unavailable.json``;
* parameters: every ``params:`` input of the pipeline, flattened to ``a.b.c`` keys
  (:func:`pipeline_params`), values cut to MLflow's 6000-character limit;
* metrics: every numeric column of a training history per optimiser step
  (:func:`history_metrics`: ``stage_one/loss`` at step 17 ...), and the numeric top-level keys of
  ``metrics`` (:func:`number_metrics`);
* artifacts: the files a dataset wrote (:func:`log_saved`), or, for a dataset with no local file,
  the object itself through MLflow's own writers.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from magicapture_pipeline.config.sections import effective_parameters, effective_section
from magicapture_pipeline.tracking.catalog import load_or

logger = logging.getLogger(__name__)

BATCH_ID_ENV = "MAGICAPTURE_BATCH_ID"  # set by the batch worker: tags the run with its batch
BATCH_ID_TAG = "magicapture.batch_id"
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_LENGTH = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
UNAVAILABLE_TAG = "magicapture.unavailable"
UNAVAILABLE_ARTIFACT = "reports/unavailable.json"  # the reasons; the registry reads them too
_OPTION_KEY = re.compile(
    r"identity|backend|enabled|restor|super_?res|upscal|watermark|blend|exported_step|export_reason"
)
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_PER_ITEM_KEYS = {"images", "per_image", "items", "files"}  # one entry per image: not a run option


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, raw in plain(mapping).items():
        name = f"{prefix}.{key}" if prefix else str(key)
        value = plain(raw)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def plain(value: Any) -> Any:
    """A pydantic model (Kedro 1.7 validates typed parameters into models) as a dict."""
    return value.model_dump() if hasattr(value, "model_dump") else value


def clipped(value: Any, limit: int) -> str:
    """``value`` as text (JSON unless a string), cut to ``limit`` characters with ``...``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(name: str) -> str:
    return _BAD_KEY_CHARS.sub("_", name)[:250]


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _git_tags(project_path: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args],
            cwd=project_path,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else False
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "git.commit": commit or "unknown",
        "git.dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit or "unknown",
    }


def run_tags(run_params: Mapping[str, Any], env: str | None, project_path: Path) -> dict[str, str]:
    """The tags a run starts with: Kedro's run options, the git commit and the batch, if any."""
    pipelines = run_params.get("pipeline_names") or ["__default__"]
    tags = {
        "kedro.env": str(run_params.get("env") or env),
        "kedro.pipelines": ",".join(pipelines),
        "kedro.run_id": session_id(run_params),
        "kedro.version": str(run_params.get("kedro_version", "")),
        "kedro.runner": _class_name(str(run_params.get("runner", ""))),
        "mlflow.source.name": "kedro run --pipelines=" + ",".join(pipelines),
        **_git_tags(project_path),
    }
    if os.environ.get(BATCH_ID_ENV):  # a concept of `make batch` (batch/worker.py)
        tags[BATCH_ID_TAG] = os.environ[BATCH_ID_ENV]
    for option in ("tags", "node_names", "from_nodes", "to_nodes", "runtime_params"):
        if run_params.get(option):
            tags[f"kedro.{option}"] = clipped(run_params[option], MAX_TAG_LENGTH)
    return tags


def session_id(run_params: Mapping[str, Any]) -> str:
    """The Kedro session id of a run (``run_id`` in Kedro 1.x, ``session_id`` before)."""
    return str(run_params.get("run_id") or run_params.get("session_id") or "")


def _class_name(text: str) -> str:
    """``<kedro.runner.thread_runner.ThreadRunner object at 0x..>`` -> ``ThreadRunner``."""
    return text.strip("<>").split(" object")[0].rsplit(".", 1)[-1]


def _scalar_options(data: Mapping[str, Any], prefix: str, depth: int = 3) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}"
        if key in _PER_ITEM_KEYS:
            continue
        if isinstance(value, Mapping) and depth > 1:
            if _OPTION_KEY.search(str(key)) and not value:
                tags[name] = "{}"
            tags.update(_scalar_options(value, name, depth - 1))
        elif _OPTION_KEY.search(name.split(".", 2)[-1]) and (
            value is None or isinstance(value, str | bool | numbers.Number)
        ):
            tags[name] = str(value)
    return tags


def option_tags(dataset_name: str, data: Mapping[str, Any]) -> dict[str, str]:
    """``magicapture.*`` tags saying which optional parts ran, read from a saved output.

    Any scalar whose key mentions identity, a backend, enabled, restoration, super-resolution,
    blending, a watermark or the exported step and its reason (issue 20) is kept;
    ``metrics["unavailable"]`` becomes one tag per metric with its
    reason; ``magicapture.identity_loss`` summarises whether the identity loss (Eq. 7) was on.
    """
    tags = _scalar_options(data, f"magicapture.{dataset_name}")
    unavailable = data.get("unavailable")
    if isinstance(unavailable, Mapping) and unavailable:
        tags[UNAVAILABLE_TAG] = ",".join(sorted(map(str, unavailable)))  # reasons: a JSON artifact
    identity = {k: v for k, v in flatten(data).items() if "identity" in k.lower()}
    if identity:
        weights = [
            v for k, v in identity.items() if re.search("weight|lambda", k) and _is_number(v)
        ]
        flags = [v for k, v in identity.items() if isinstance(v, bool)]
        on = (any(float(w) > 0 for w in weights) if weights else True) and all(flags)
        tags["magicapture.identity_loss"] = "on" if on else "off"
    return {_key(k): clipped(v, MAX_TAG_LENGTH) for k, v in tags.items()}


def pipeline_params(pipeline: Any, catalog: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters the pipeline reads, flattened; every parameter if it reads ``parameters``."""
    inputs = sorted(pipeline.inputs())
    if "parameters" in inputs:
        return flatten(effective_parameters(parameters))
    flat: dict[str, Any] = {}
    for name in inputs:
        if name.startswith("params:"):
            key = name.removeprefix("params:")
            value = effective_section(key, load_or(catalog, name, None))
            flat.update(flatten(value, key) if isinstance(value, Mapping) else {key: value})
    return flat


def _numeric_column(column: Any) -> bool:
    return column.dtype.kind in "iuf"


def history_metrics(prefix: str, history: Any) -> list[Any]:
    """A training history (one row per optimiser step) as MLflow metrics ``<prefix>/<column>``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    steps = history["step"] if "step" in history.columns else history.index
    return [
        Metric(_key(f"{prefix}/{column}"), float(value), now, int(step))
        for column in history.columns
        if column != "step" and _numeric_column(history[column])
        for step, value in zip(steps, history[column], strict=True)
        if _is_number(value)
    ]


def number_metrics(metrics: Mapping[str, Any]) -> list[Any]:
    """The finite numeric top-level entries of ``metrics`` as MLflow metrics at step 0."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(_key(k), float(v), now, 0) for k, v in metrics.items() if _is_number(v)]


def params_batch(params: Mapping[str, Any]) -> list[Any]:
    """Flattened parameters as MLflow params (keys cleaned, values cut to MLflow's limit)."""
    from mlflow.entities import Param

    return [Param(_key(k), clipped(v, MAX_PARAM_LENGTH)) for k, v in params.items()]


def as_mapping(data: Any, path: Path | None) -> Mapping[str, Any] | None:
    """A saved output as a dict: itself, or a JSON file it wrote (a folder's ``*.json``)."""
    if isinstance(data, Mapping) and all(isinstance(k, str) for k in data):
        if all(not callable(v) and not hasattr(v, "save") for v in data.values()):
            return data
    if path is None:
        return None
    files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    content: dict[str, Any] = {}
    for file in files:
        if file.suffix == ".json":
            loaded = json.loads(file.read_text())
            if isinstance(loaded, Mapping):
                content.update(loaded)
    return content or None


def log_saved(
    client: Any, run_id: str, path: Path | None, data: Any, folder: str, name: str, limit: int
) -> None:
    """Log what dataset ``name`` saved under ``folder``: its file, its folder's files (the first
    ``limit``), or the object itself when it has no local file."""
    if path is not None and path.is_file():
        client.log_artifact(run_id, str(path), folder)
    elif path is not None and path.is_dir():
        target = f"{folder}/{path.name}" if not folder.endswith(path.name) else folder
        for file in _files(path, limit):
            sub = file.parent.relative_to(path).as_posix()
            client.log_artifact(run_id, str(file), target if sub == "." else f"{target}/{sub}")
    else:
        _log_in_memory(client, run_id, data, folder, name, limit)


def _files(folder: Path, limit: int) -> Iterator[Path]:
    for count, path in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        if count >= limit:
            logger.info("MLflow: logged the first %d files of %s", limit, folder)
            return
        yield path


def _log_in_memory(client: Any, run_id: str, data: Any, folder: str, name: str, limit: int) -> None:
    """Log what a dataset saved when it has no local file, through MLflow's own writers."""
    if hasattr(data, "to_csv"):
        client.log_text(run_id, data.to_csv(index=False), f"{folder}/{name}.csv")
    elif hasattr(data, "save") and callable(data.save):  # a PIL image
        client.log_image(run_id, data, f"{folder}/{name}.png")
    elif isinstance(data, Mapping):
        if all(hasattr(v, "save") or callable(v) for v in data.values()):
            for key, value in sorted(data.items())[:limit]:
                image = value() if callable(value) else value  # a partition's lazy loader
                client.log_image(run_id, image, f"{folder}/{str(key).replace('/', '__')}.png")
        else:
            plain = json.loads(json.dumps(data, default=str))
            client.log_dict(run_id, plain, f"{folder}/{name}.json")
