"""MLflow tracking: one MLflow run per ``kedro run``, the one module that logs runs to MLflow.

The hook talks to MLflow only through ``MlflowClient`` with an explicit run id: the fluent API keeps
its active run in a thread-local, so under ``ThreadRunner`` nodes would log to different runs.

What one run holds:

* tags: git commit, Kedro env / pipelines / run id / version / runner, and which optional parts ran
  (``magicapture.*`` tags read from ``concept``, ``metrics`` and post-processing reports), one tag
  per fact a person filters on; metrics that could not be computed get one short tag
  ``magicapture.unavailable`` (their names) and their reasons go to ``reports/unavailable.json``;
* parameters: every ``params:`` input of the pipeline, flattened to ``a.b.c`` keys, values cut to
  MLflow's 6000-character limit;
* metrics: every numeric column of ``stage_one_history`` / ``stage_two_history`` per optimiser step
  (``stage_one/loss`` at step 17 ...), and the numeric top-level keys of ``metrics``;
* artifacts: validation report, mask overlays, attention heatmaps, sample grid, histories, metrics,
  logged from the files the catalog wrote, right after each dataset is saved.

The experiment carries ``mlflow.experimentKind = custom_model_development``, so MLflow 3's UI opens
it in its model-training view (not the GenAI view).

The run id reaches the ``register`` node as the dataset ``mlflow_run`` (``{"run_id",
"tracking_uri", "experiment_id", "project_path"}``) that the hook adds to the catalog before the
run when a node asks for it; the data flow is visible in the pipeline instead of hiding in a global.

Tracking never kills a run: every MLflow failure is logged as a warning. Turn tracking off with
``MAGICAPTURE_MLFLOW=0`` or ``tracking.enabled: false``. The tracking URI is
``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project>/mlflow.db``.
Hooks run in the main process: use the sequential or thread runner (``ParallelRunner`` workers
log nothing).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import numbers
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from magicapture_pipeline.config.sections import effective_parameters, effective_section
from magicapture_pipeline.config.tracking import TrackingConfig
from magicapture_pipeline.core.faces.face_set import materialise
from magicapture_pipeline.tracking.store import tracking_client

logger = logging.getLogger(__name__)

TRACKING_ENV_VAR = "MAGICAPTURE_MLFLOW"
BATCH_ID_ENV = "MAGICAPTURE_BATCH_ID"  # set by the batch worker: tags the run with its batch
RUN_DATASET = "mlflow_run"
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_LENGTH = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow 3's UI to pick the view
EXPERIMENT_KIND = "custom_model_development"  # the model-training view
UNAVAILABLE_TAG = "magicapture.unavailable"
UNAVAILABLE_ARTIFACT = "reports/unavailable.json"
_OPTION_KEY = re.compile(r"identity|backend|enabled|restor|super_?res|upscal|watermark|blend")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_PER_ITEM_KEYS = {"images", "per_image", "items", "files"}  # one entry per image: not a run option


def tracking_disabled_by_env() -> bool:
    """True when ``MAGICAPTURE_MLFLOW`` is set to 0 / false / off / no."""
    return os.environ.get(TRACKING_ENV_VAR, "1").strip().lower() in {"0", "false", "off", "no"}


def resolve_tracking_uri(project_path: Path, configured: str | None = None) -> str:
    """``configured``, else ``$MLFLOW_TRACKING_URI``, else the project's sqlite database."""
    return (
        configured
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(Path(project_path) / 'mlflow.db').resolve()}"
    )


def local_artifact_root(tracking_uri: str, project_path: Path) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts/`` beside a local sqlite database.

    MLflow would otherwise use ``./mlruns`` relative to whatever the working directory is. A remote
    tracking server decides for itself (None).
    """
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        root = database.parent if database.is_absolute() else Path(project_path) / database.parent
        return (root / "mlartifacts").resolve().as_uri()
    return None


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, raw in _plain(mapping).items():
        name = f"{prefix}.{key}" if prefix else str(key)
        value = _plain(raw)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _plain(value: Any) -> Any:
    """A pydantic model (Kedro 1.7 validates typed parameters into models) as a dict."""
    return value.model_dump() if hasattr(value, "model_dump") else value


def _text(value: Any, limit: int) -> str:
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
    blending or a watermark is kept; ``metrics["unavailable"]`` becomes one tag per metric with its
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
    return {_key(k): _text(v, MAX_TAG_LENGTH) for k, v in tags.items()}


def _files(folder: Path, limit: int) -> Iterator[Path]:
    for count, path in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        if count >= limit:
            logger.info("MLflow: logged the first %d files of %s", limit, folder)
            return
        yield path


def _safe(method: Callable) -> Callable:
    """Tracking failures are warnings: a run must never die because MLflow did."""

    @functools.wraps(method)
    def wrapper(self: MlflowTrackingHook, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - deliberately broad, see docstring
            logger.warning(
                "MLflow tracking: %s failed (%s: %s)", method.__name__, type(error).__name__, error
            )
            return None

    return wrapper


@dataclass
class _ActiveRun:
    client: Any
    run_id: str
    experiment_id: str
    tracking_uri: str
    config: TrackingConfig
    catalog: Any
    failed_node: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


class MlflowTrackingHook:
    """Logs each ``kedro run`` as one MLflow run (see the module docstring)."""

    def __init__(self) -> None:
        self._project_path: Path = Path.cwd()
        self._env: str | None = None
        self._run: _ActiveRun | None = None

    @property
    def active_run_id(self) -> str | None:
        """The MLflow run id of the Kedro run in progress, if tracked."""
        return self._run.run_id if self._run else None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = Path(context.project_path)
        self._env = context.env

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        self._run = None
        run_info = self._begin(run_params, pipeline, catalog) or {
            "run_id": None,
            "tracking_uri": resolve_tracking_uri(self._project_path),
            "reason": "MLflow tracking failed to start (see warnings)",
        }
        run_info["project_path"] = str(run_params.get("project_path") or self._project_path)
        if RUN_DATASET in pipeline.inputs():
            catalog[RUN_DATASET] = run_info

    @_safe
    def _begin(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> dict[str, Any]:
        parameters = _load_or(catalog, "parameters", {})
        config = _tracking_config(parameters)
        project_path = Path(run_params.get("project_path") or self._project_path)
        tracking_uri = resolve_tracking_uri(project_path, config.tracking_uri)
        run_info: dict[str, Any] = {"run_id": None, "tracking_uri": tracking_uri}
        if not config.enabled or tracking_disabled_by_env():
            run_info["reason"] = (
                "MLflow tracking disabled (MAGICAPTURE_MLFLOW=0 or tracking.enabled)"
            )
            logger.info(run_info["reason"])
        else:
            run = self._start(
                run_params,
                pipeline,
                catalog,
                parameters=parameters,
                config=config,
                tracking_uri=tracking_uri,
            )
            if run is not None:
                self._run = run
                run_info.update(run_id=run.run_id, experiment_id=run.experiment_id)
            else:
                run_info["reason"] = "MLflow run could not be created (see warnings)"
        return run_info

    @_safe
    def _start(
        self,
        run_params: dict[str, Any],
        pipeline: Any,
        catalog: Any,
        *,
        parameters: dict[str, Any],
        config: TrackingConfig,
        tracking_uri: str,
    ) -> _ActiveRun:
        from mlflow.entities import Param

        project_path = Path(run_params.get("project_path") or self._project_path)
        client = tracking_client(tracking_uri)  # serialised on a shared local sqlite store
        experiment_id = _experiment_id(client, config.experiment_name, tracking_uri, project_path)
        pipelines = run_params.get("pipeline_names") or ["__default__"]
        session_id = str(run_params.get("run_id") or run_params.get("session_id") or "")
        tags = {
            "kedro.env": str(run_params.get("env") or self._env),
            "kedro.pipelines": ",".join(pipelines),
            "kedro.run_id": session_id,
            "kedro.version": str(run_params.get("kedro_version", "")),
            "kedro.runner": _class_name(str(run_params.get("runner", ""))),
            "mlflow.source.name": "kedro run --pipelines=" + ",".join(pipelines),
            **_git_tags(project_path),
        }
        if os.environ.get(BATCH_ID_ENV):  # a concept of `make batch` (batch/worker.py)
            tags["magicapture.batch_id"] = os.environ[BATCH_ID_ENV]
        for option in ("tags", "node_names", "from_nodes", "to_nodes", "runtime_params"):
            if run_params.get(option):
                tags[f"kedro.{option}"] = _text(run_params[option], MAX_TAG_LENGTH)
        run = client.create_run(
            experiment_id, run_name=f"{'+'.join(pipelines)}-{session_id}", tags=tags
        )
        run_id = run.info.run_id
        params = _pipeline_params(pipeline, catalog, parameters)
        items = [Param(_key(k), _text(v, MAX_PARAM_LENGTH)) for k, v in params.items()]
        client.log_batch(run_id, params=items)  # splits into MLflow's per-call limits itself
        logger.info(
            "MLflow run %s in experiment '%s' (%s)", run_id, config.experiment_name, tracking_uri
        )
        return _ActiveRun(client, run_id, experiment_id, tracking_uri, config, catalog)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        run = self._run
        if run is None:
            return
        config = run.config
        if dataset_name in config.history_datasets:
            self._log_history(run, config.history_datasets[dataset_name], data)
        if dataset_name == config.metrics_dataset:
            self._log_metrics(run, data)
        if dataset_name in config.option_datasets:
            self._log_options(run, dataset_name, data)
        if dataset_name in config.artifact_datasets:
            self._log_artifacts(run, dataset_name, data, config.artifact_datasets[dataset_name])

    @_safe
    def _log_history(self, run: _ActiveRun, prefix: str, history: Any) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        steps = history["step"] if "step" in history.columns else history.index
        metrics = [
            Metric(_key(f"{prefix}/{column}"), float(value), now, int(step))
            for column in history.columns
            if column != "step" and _numeric_column(history[column])
            for step, value in zip(steps, history[column], strict=True)
            if _is_number(value)
        ]
        run.client.log_batch(run.run_id, metrics=metrics)

    @_safe
    def _log_metrics(self, run: _ActiveRun, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, 0) for k, v in metrics.items() if _is_number(v)]
        run.client.log_batch(run.run_id, metrics=items)

    @_safe
    def _log_options(self, run: _ActiveRun, dataset_name: str, data: Any) -> None:
        from mlflow.entities import RunTag

        content = _as_mapping(data, dataset_path(run.catalog, dataset_name))
        tags = option_tags(dataset_name, content) if content else {}
        run.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        run.options.update(tags)
        unavailable = (content or {}).get("unavailable")
        if isinstance(unavailable, Mapping) and unavailable:
            run.unavailable.update({str(k): str(v) for k, v in unavailable.items()})
            reasons = dict(sorted(run.unavailable.items()))
            run.client.log_dict(run.run_id, reasons, UNAVAILABLE_ARTIFACT)

    @_safe
    def _log_artifacts(self, run: _ActiveRun, dataset_name: str, data: Any, folder: str) -> None:
        path = dataset_path(run.catalog, dataset_name)
        if path is not None and path.is_file():
            run.client.log_artifact(run.run_id, str(path), folder)
        elif path is not None and path.is_dir():
            target = f"{folder}/{path.name}" if not folder.endswith(path.name) else folder
            for file in _files(path, run.config.max_files_per_dataset):
                sub = file.parent.relative_to(path).as_posix()
                run.client.log_artifact(
                    run.run_id, str(file), target if sub == "." else f"{target}/{sub}"
                )
        else:
            _log_in_memory(run, data, folder, dataset_name)

    @hook_impl
    def on_node_error(self, error: Exception, node: Any) -> None:
        if self._run is not None:
            self._run.failed_node = node.name

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any]) -> None:
        run, self._run = self._run, None
        if run is not None:
            self._finish(run, "FINISHED", None)

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any]) -> None:
        run, self._run = self._run, None
        if run is not None:
            self._finish(run, "FAILED", error)

    @_safe
    def _finish(self, run: _ActiveRun, status: str, error: Exception | None) -> None:
        if error is not None:
            message = f"{type(error).__name__}: {error}"
            run.client.set_tag(run.run_id, "error", _text(message, MAX_TAG_LENGTH))
            if run.failed_node:
                run.client.set_tag(run.run_id, "error.node", run.failed_node)
        run.client.set_terminated(run.run_id, status=status)
        logger.info("MLflow run %s %s", run.run_id, status)


def _class_name(text: str) -> str:
    """``<kedro.runner.thread_runner.ThreadRunner object at 0x..>`` -> ``ThreadRunner``."""
    return text.strip("<>").split(" object")[0].rsplit(".", 1)[-1]


def _load_or(catalog: Any, name: str, default: Any) -> Any:
    try:
        return catalog.load(name) if name in catalog else default
    except Exception:  # noqa: BLE001 - a catalog without parameters
        return default


def _tracking_config(parameters: Mapping[str, Any]) -> TrackingConfig:
    try:
        return TrackingConfig.model_validate(_plain(parameters.get("tracking") or {}))
    except Exception as error:  # noqa: BLE001 - bad config must not stop training
        logger.warning("MLflow tracking: invalid params:tracking (%s); using defaults", error)
        return TrackingConfig()


def _experiment_id(client: Any, name: str, tracking_uri: str, project_path: Path) -> str:
    """The experiment's id (created when missing), tagged for MLflow's model-training view."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=local_artifact_root(tracking_uri, project_path),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except Exception:  # another process created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _pipeline_params(pipeline: Any, catalog: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters the pipeline reads, flattened; every parameter if it reads ``parameters``."""
    inputs = sorted(pipeline.inputs())
    if "parameters" in inputs:
        return flatten(effective_parameters(parameters))
    flat: dict[str, Any] = {}
    for name in inputs:
        if name.startswith("params:"):
            key = name.removeprefix("params:")
            value = effective_section(key, _load_or(catalog, name, None))
            flat.update(flatten(value, key) if isinstance(value, Mapping) else {key: value})
    return flat


def _numeric_column(column: Any) -> bool:
    return column.dtype.kind in "iuf"


def _as_mapping(data: Any, path: Path | None) -> Mapping[str, Any] | None:
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


def _log_in_memory(run: _ActiveRun, data: Any, folder: str, name: str) -> None:
    """Log what a dataset saved when it has no local file, through MLflow's own writers."""
    client, run_id = run.client, run.run_id
    if hasattr(data, "to_csv"):
        client.log_text(run_id, data.to_csv(index=False), f"{folder}/{name}.csv")
    elif hasattr(data, "save") and callable(data.save):  # a PIL image
        client.log_image(run_id, data, f"{folder}/{name}.png")
    elif isinstance(data, Mapping):
        if all(hasattr(v, "save") or callable(v) for v in data.values()):
            for key, value in sorted(data.items())[: run.config.max_files_per_dataset]:
                image = materialise(value)
                client.log_image(run_id, image, f"{folder}/{str(key).replace('/', '__')}.png")
        else:
            plain = json.loads(json.dumps(data, default=str))
            client.log_dict(run_id, plain, f"{folder}/{name}.json")
