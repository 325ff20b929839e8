"""MLflow tracking: one MLflow run per ``kedro run``, the Kedro hook that logs runs to MLflow.

The hook talks to MLflow only through ``MlflowClient`` with an explicit run id: the fluent API keeps
its active run in a thread-local, so under ``ThreadRunner`` nodes would log to different runs.

This module is the run's life: it starts the run before the pipeline (tags and parameters), logs
each dataset right after it is saved, and ends the run FINISHED or FAILED (with the error and the
node), or KILLED with the tag ``stopped_by_signal`` when SIGTERM/SIGINT stopped it
(``hooks/stop.py``). What a run holds (tags, parameters, metrics, artifacts) is
``tracking/logged.py``; the ``mlflow_run`` dataset it adds to the catalog for the ``register``
node is ``tracking/catalog.py``; the tracking URI is ``tracking/uris.py``.

The experiment carries ``mlflow.experimentKind = custom_model_development``, so MLflow 3's UI opens
it in its model-training view (not the GenAI view).

Tracking never kills a run: every MLflow failure is logged as a warning. Turn tracking off with
``MAGICAPTURE_MLFLOW=0`` or ``tracking.enabled: false``. The tracking URI is
``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project>/mlflow.db``.
Hooks run in the main process: use the sequential or thread runner (``ParallelRunner`` workers
log nothing).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from magicapture_pipeline.concepts import RunStopped
from magicapture_pipeline.config.tracking import TrackingConfig
from magicapture_pipeline.tracking.catalog import (
    add_run_dataset,
    dataset_path,
    load_or,
    tracked_files,
)
from magicapture_pipeline.tracking.logged import (
    MAX_TAG_LENGTH,
    UNAVAILABLE_ARTIFACT,
    as_mapping,
    clipped,
    history_metrics,
    log_saved,
    number_metrics,
    option_tags,
    params_batch,
    pipeline_params,
    plain,
    run_tags,
    session_id,
)
from magicapture_pipeline.tracking.spool import (
    COMPLETE_TAG,
    SPOOL_DIR,
    SPOOLED_TAG,
    SpoolingClient,
    set_http_timeouts,
)
from magicapture_pipeline.tracking.store import tracking_client
from magicapture_pipeline.tracking.uris import (
    local_artifact_root,
    resolve_tracking_uri,
    tracking_disabled_by_env,
)
from magicapture_pipeline.tracking.validation import export_tags, images_by_step, log_validation

logger = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow 3's UI to pick the view
EXPERIMENT_KIND = "custom_model_development"  # the model-training view
STOPPED_TAG = "stopped_by_signal"  # SIGTERM / SIGINT: the run is KILLED (hooks/stop.py)


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
        add_run_dataset(pipeline, catalog, run_info)

    @_safe
    def _begin(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> dict[str, Any]:
        parameters = load_or(catalog, "parameters", {})
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
        project_path = Path(run_params.get("project_path") or self._project_path)
        if tracking_uri.startswith(("http://", "https://")):
            set_http_timeouts()  # a dead server costs seconds per call, not minutes
        client = tracking_client(tracking_uri)  # serialised on a shared local sqlite store
        experiment_id = _experiment_id(client, config.experiment_name, tracking_uri, project_path)
        pipelines = run_params.get("pipeline_names") or ["__default__"]
        run = client.create_run(
            experiment_id,
            run_name=f"{'+'.join(pipelines)}-{session_id(run_params)}",
            tags=run_tags(run_params, self._env, project_path),
        )
        run_id = run.info.run_id
        # from here on, a call the server cannot take waits in a spool (tracking/spool.py)
        client = SpoolingClient(client, run_id, project_path / SPOOL_DIR, tracking_uri)
        params = params_batch(pipeline_params(pipeline, catalog, parameters))
        client.log_batch(run_id, params=params)  # splits into MLflow's per-call limits itself
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
        if dataset_name in config.step_image_datasets:
            self._log_step_images(run, config.step_image_datasets[dataset_name], data)
        if dataset_name == config.metrics_dataset:
            self._log_metrics(run, data)
        if dataset_name in config.option_datasets:
            self._log_options(run, dataset_name, data)
        if dataset_name in config.artifact_datasets:
            self._log_artifacts(run, dataset_name, data, config.artifact_datasets[dataset_name])

    @_safe
    def _log_history(self, run: _ActiveRun, prefix: str, history: Any) -> None:
        from mlflow.entities import RunTag

        run.client.log_batch(run.run_id, metrics=history_metrics(prefix, history))
        tags = export_tags(prefix, history)  # validation histories: the exported step and why
        if tags:
            run.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    @_safe
    def _log_step_images(self, run: _ActiveRun, prefix: str, partitions: Any) -> None:
        log_validation(run.client, run.run_id, prefix, [], images_by_step(partitions or {}))

    @_safe
    def _log_metrics(self, run: _ActiveRun, metrics: Mapping[str, Any]) -> None:
        run.client.log_batch(run.run_id, metrics=number_metrics(metrics))

    @_safe
    def _log_options(self, run: _ActiveRun, dataset_name: str, data: Any) -> None:
        from mlflow.entities import RunTag

        content = as_mapping(data, dataset_path(run.catalog, dataset_name))
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
        limit = run.config.max_files_per_dataset
        picked = tracked_files(run.catalog, dataset_name)
        if picked is not None:  # the dataset names what the run keeps (an export: its card)
            for file in picked[:limit]:
                run.client.log_artifact(run.run_id, str(file), folder)
            return
        path = dataset_path(run.catalog, dataset_name)
        log_saved(run.client, run.run_id, path, data, folder, dataset_name, limit)

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
            self._finish(run, "KILLED" if isinstance(error, RunStopped) else "FAILED", error)

    @_safe
    def _finish(self, run: _ActiveRun, status: str, error: Exception | None) -> None:
        if isinstance(error, RunStopped):  # hooks/stop.py: SIGTERM/SIGINT
            run.client.set_tag(run.run_id, STOPPED_TAG, error.signal_name)
        if error is not None:
            message = f"{type(error).__name__}: {error}"
            run.client.set_tag(run.run_id, "error", clipped(message, MAX_TAG_LENGTH))
            if run.failed_node:
                run.client.set_tag(run.run_id, "error.node", run.failed_node)
        client = run.client
        if isinstance(client, SpoolingClient):
            client.flush(force=True)
            if client.dropped:  # data lost past the spool's bound: never FINISHED
                status = "FAILED" if status == "FINISHED" else status
                lost = f"{client.dropped} tracking call(s) dropped: the spool was full"
                client.set_tag(run.run_id, "error", lost)
            client.set_tag(run.run_id, COMPLETE_TAG, "false" if client.dropped else "true")
            client.set_tag(run.run_id, SPOOLED_TAG, str(client.spooled))
        client.set_terminated(run.run_id, status=status)
        if isinstance(client, SpoolingClient) and client.pending:
            logger.warning(
                "MLflow run %s: the server is unreachable; the run stays RUNNING there until "
                "`python -m magicapture_pipeline.tracking.spool sync` delivers %s and ends it %s",
                run.run_id,
                client.path,
                status,
            )
            return
        logger.info("MLflow run %s %s", run.run_id, status)


def _tracking_config(parameters: Mapping[str, Any]) -> TrackingConfig:
    try:
        return TrackingConfig.model_validate(plain(parameters.get("tracking") or {}))
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
