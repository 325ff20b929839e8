"""The concept as an MLflow model: pyfunc wrapper, registration, alias promotion and rollback.

A registered version of ``magicapture-<concept>`` is an MLflow pyfunc whose artifacts are the
exported concept folder (LoRA, one embedding per token, ``concept.json``). The base Stable Diffusion
is referenced, not copied: its folder or hub id is stored in the model config (``base_model``) and
loaded by ``load_context``. Each new version carries its metrics as tags (``metric.<name>``,
``unavailable.<name>``) and the alias ``candidate``.

Promotion moves ``champion`` to a version only when its metric tags pass the configured gates; the
former champion keeps the alias ``previous`` and ``rollback`` swaps the two back. Both are also a
one-line command::

    kedro run --pipelines=promote --env=demo [--params=model_version=3]
    kedro run --pipelines=promote --env=demo --params=action=rollback
    python -m magicapture_pipeline.registry promote magicapture-demo --env demo [--version 3]
    python -m magicapture_pipeline.registry rollback magicapture-demo

The base model is loaded with ``core.generation.load_base_pipeline`` and the concept attached with
``core.generation.attach_concept`` (LoRA scales 0.6 / 0.9, as the ``generate`` pipeline samples), so
``predict`` draws what ``generate`` draws. The base model's folder is stored as an absolute path:
a fresh process finds it from any working directory on the same machine; elsewhere, put the same
folder there or register with a hub id. ``models:/<name>@champion`` resolves through the tracking
URI (default ``sqlite:///mlflow.db`` in the working directory, i.e. the project root).

``predict`` input: a DataFrame with a ``prompt`` column (``[V1]``/``[V2]`` or ``{v1}``/``{v2}`` are
replaced by the concept's tokens) and optional ``seed``, ``steps``, ``guidance_scale``. Output: a
DataFrame with ``prompt``, ``seed``, ``steps`` and ``image`` (base64 PNG), which serialises as JSON
for ``mlflow models serve``; ``decode_image`` turns a cell back into a PIL image.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from magicapture_pipeline.config.tracking import PromotionGates, RegistryConfig
from magicapture_pipeline.tracking_store import tracking_client

logger = logging.getLogger(__name__)

CONCEPT_ARTIFACT = "concept"
METRIC_TAG = "metric."
UNAVAILABLE_TAG = "unavailable."
PIP_REQUIREMENTS = [
    "mlflow==3.17.2",
    "torch==2.13.0",
    "diffusers==0.42.1",
    "transformers==5.24.0",
    "peft==0.21.2",
    "safetensors",
    "pillow",
    "pandas",
]


class PromotionRefused(RuntimeError):
    """A promotion gate failed; the message names the gate and the value that failed it."""


# --------------------------------------------------------------------------- the pyfunc model


def _fill_tokens(prompt: str, person: str, style: str) -> str:
    for placeholder, token in (
        ("[V1]", person),
        ("{v1}", person),
        ("[V2]", style),
        ("{v2}", style),
    ):
        prompt = prompt.replace(placeholder, token)
    return prompt


def encode_image(image: Any) -> str:
    """A PIL image as a base64 PNG string (the ``image`` column of ``predict``)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(text: str) -> Any:
    """The inverse of ``encode_image``: a PIL image."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


class ConceptModel(mlflow.pyfunc.PythonModel):
    """A MagiCapture concept on its base Stable Diffusion, as an MLflow pyfunc."""

    def load_context(self, context: Any) -> None:
        """Load the base model named in the model config and attach the concept to it."""
        from magicapture_pipeline.core.generation import (
            attach_concept,
            concept_tokens,
            load_base_pipeline,
        )

        config = context.model_config or {}
        self._pipe = load_base_pipeline(config["base_model"], device=config.get("device", "cpu"))
        self._pipe.set_progress_bar_config(disable=True)
        concept = attach_concept(self._pipe, context.artifacts[CONCEPT_ARTIFACT])
        self._person, self._style = concept_tokens(concept)
        self._steps = int(config.get("default_steps", 30))
        self._guidance = float(config.get("guidance_scale", 7.5))
        self._resolution = config.get("resolution")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None):
        """One image per row of ``model_input`` (see the module docstring for the columns)."""
        import torch

        frame = pd.DataFrame(model_input)
        rows = []
        for index, row in enumerate(frame.to_dict("records")):
            seed = _int_or(row.get("seed"), index)
            steps = _int_or(row.get("steps"), self._steps)
            guidance = float(_num_or(row.get("guidance_scale"), self._guidance))
            prompt = _fill_tokens(str(row["prompt"]), self._person, self._style)
            size = (
                {"height": self._resolution, "width": self._resolution} if self._resolution else {}
            )
            with torch.no_grad():
                image = self._pipe(
                    prompt,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=torch.Generator(device="cpu").manual_seed(seed),
                    **size,
                ).images[0]
            rows.append(
                {"prompt": prompt, "seed": seed, "steps": steps, "image": encode_image(image)}
            )
        return pd.DataFrame(rows, columns=["prompt", "seed", "steps", "image"])


def _num_or(value: Any, default: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def _int_or(value: Any, default: int) -> int:
    return int(_num_or(value, default))


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("long", "seed", required=False),
            ColSpec("long", "steps", required=False),
            ColSpec("double", "guidance_scale", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("long", "seed"),
            ColSpec("long", "steps"),
            ColSpec("string", "image"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


# --------------------------------------------------------------------------- registration


def _save_pyfunc(local: Path, concept_dir: str | Path, base_model: str, config: RegistryConfig):
    mlflow.pyfunc.save_model(
        path=local,
        # Models from code: the model is rebuilt by running pyfunc_model.py, never unpickled.
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={CONCEPT_ARTIFACT: str(concept_dir)},
        model_config={
            "base_model": base_model,
            "default_steps": config.default_steps,
            "guidance_scale": config.guidance_scale,
            "resolution": config.resolution,
        },
        signature=_signature(),
        pip_requirements=PIP_REQUIREMENTS,
    )


def client_for(tracking_uri: str | None) -> MlflowClient:
    """An ``MlflowClient`` whose registry is the tracking store (sqlite keeps both); calls to a
    local sqlite store are serialised across processes (``tracking_store``)."""
    return tracking_client(tracking_uri, registry_uri=tracking_uri)


def metric_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """``metrics.json`` as version tags: ``metric.<name>`` and ``unavailable.<name>``."""
    tags = {
        f"{METRIC_TAG}{k}": repr(float(v))
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    for name, reason in (metrics.get("unavailable") or {}).items():
        tags[f"{UNAVAILABLE_TAG}{name}"] = str(reason)[:5000]
    return tags


def register_concept(
    concept_dir: str | Path,
    base_model: str,
    metrics: Mapping[str, Any],
    *,
    run_id: str,
    tracking_uri: str | None,
    config: RegistryConfig,
) -> dict[str, Any]:
    """Log the concept as a pyfunc in ``run_id``, register a version and alias it ``candidate``.

    Args:
        concept_dir: the exported concept folder (LoRA, embeddings, ``concept.json``).
        base_model: folder (made absolute by the caller) or hub id of the base SD.
        metrics: ``metrics.json`` (numeric top-level keys + ``unavailable``).
        run_id: the MLflow run the model artifacts go to.
        tracking_uri: MLflow tracking (and registry) URI.
        config: the registry settings.

    Returns:
        ``{"model_name", "version", "aliases", "run_id", "source", "tracking_uri", "metrics"}``.
    """
    client = client_for(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / config.artifact_path
        with warnings.catch_warnings():  # no input_example: it would run predict at save time
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            _save_pyfunc(local, concept_dir, base_model, config)
        client.log_artifacts(run_id, str(local), config.artifact_path)
    try:
        client.create_registered_model(
            config.model_name, description="MagiCapture concept (LoRA + [V1]/[V2] embeddings)."
        )
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise
    tags = metric_tags(metrics)
    version = client.create_model_version(
        config.model_name,
        source=f"runs:/{run_id}/{config.artifact_path}",
        run_id=run_id,
        tags={**tags, "base_model": base_model},
    )
    client.set_registered_model_alias(config.model_name, config.candidate_alias, version.version)
    logger.info(
        "Registered %s version %s as @%s",
        config.model_name,
        version.version,
        config.candidate_alias,
    )
    return {
        "model_name": config.model_name,
        "version": int(version.version),
        "aliases": [config.candidate_alias],
        "run_id": run_id,
        "source": f"runs:/{run_id}/{config.artifact_path}",
        "tracking_uri": tracking_uri,
        "metrics": {
            k.removeprefix(METRIC_TAG): float(v)
            for k, v in tags.items()
            if k.startswith(METRIC_TAG)
        },
    }


# --------------------------------------------------------------------------- promotion


def version_metrics(tags: Mapping[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """The ``metric.*`` and ``unavailable.*`` tags of a model version."""
    metrics = {
        k.removeprefix(METRIC_TAG): float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)
    }
    unavailable = {
        k.removeprefix(UNAVAILABLE_TAG): v for k, v in tags.items() if k.startswith(UNAVAILABLE_TAG)
    }
    return metrics, unavailable


def failed_gates(
    metrics: Mapping[str, float], unavailable: Mapping[str, str], gates: PromotionGates
) -> list[str]:
    """One message per failed gate, naming it (empty: the version may become champion)."""
    failures = []
    for name in gates.required_metrics:
        if name not in metrics:
            why = f" (unavailable: {unavailable[name]})" if name in unavailable else ""
            failures.append(f"gate required_metrics: '{name}' is missing{why}")
    for name, bound in gates.min_metrics.items():
        if bound is None:
            continue
        if name not in metrics:
            failures.append(f"gate min_metrics.{name}: '{name}' is missing")
        elif metrics[name] < bound:
            failures.append(f"gate min_metrics.{name}: {name}={metrics[name]:.4g} < {bound}")
    for name, bound in gates.max_metrics.items():
        if bound is None:
            continue
        if name not in metrics:
            failures.append(f"gate max_metrics.{name}: '{name}' is missing")
        elif metrics[name] > bound:
            failures.append(f"gate max_metrics.{name}: {name}={metrics[name]:.4g} > {bound}")
    trained = metrics.get("identity_loss_trained")
    if not gates.allow_without_identity_loss and trained != 1.0:
        state = "missing" if trained is None else f"{trained:g}"
        failures.append(
            f"gate identity_loss: the concept did not train with the identity loss (Eq. 7; "
            f"identity_loss_trained={state}); set registry.gates.allow_without_identity_loss: "
            "true to promote it anyway"
        )
    return failures


def _alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(
    client: MlflowClient, model_name: str, version: int | None, config: RegistryConfig
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` (default: the ``candidate``) if it passes the gates.

    The former champion keeps the alias ``previous``. Nothing changes when a gate fails.

    Raises:
        PromotionRefused: naming every failed gate.
    """
    if version is None:
        version = _alias_version(client, model_name, config.candidate_alias)
        if version is None:
            raise PromotionRefused(f"{model_name} has no @{config.candidate_alias} version")
    details = client.get_model_version(model_name, str(version))
    metrics, unavailable = version_metrics(details.tags)
    failures = failed_gates(metrics, unavailable, config.gates)
    if failures:
        note = f" [{config.gates.note}]" if config.gates.note else ""
        raise PromotionRefused(
            f"{model_name} version {version} not promoted: " + "; ".join(failures) + note
        )
    old = _alias_version(client, model_name, config.champion_alias)
    if old is not None and old != int(version):
        client.set_registered_model_alias(model_name, config.previous_alias, str(old))
    client.set_registered_model_alias(model_name, config.champion_alias, str(version))
    logger.info(
        "%s: @%s -> version %s (previous: %s)", model_name, config.champion_alias, version, old
    )
    return {
        "action": "promote",
        "model_name": model_name,
        "champion": int(version),
        "previous": old if old != int(version) else None,
        "metrics": metrics,
    }


def rollback(client: MlflowClient, model_name: str, config: RegistryConfig) -> dict[str, Any]:
    """Give ``champion`` back to the ``previous`` version; the demoted one becomes ``previous``.

    Raises:
        PromotionRefused: when there is no ``previous`` version to return to.
    """
    previous = _alias_version(client, model_name, config.previous_alias)
    if previous is None:
        raise PromotionRefused(
            f"{model_name} has no @{config.previous_alias} version to roll back to"
        )
    current = _alias_version(client, model_name, config.champion_alias)
    client.set_registered_model_alias(model_name, config.champion_alias, str(previous))
    if current is not None and current != previous:
        client.set_registered_model_alias(model_name, config.previous_alias, str(current))
    logger.info(
        "%s: rolled @%s back from %s to %s", model_name, config.champion_alias, current, previous
    )
    return {
        "action": "rollback",
        "model_name": model_name,
        "champion": previous,
        "previous": current,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m magicapture_pipeline.registry {promote,rollback} MODEL [--version N]``."""
    parser = argparse.ArgumentParser(prog="python -m magicapture_pipeline.registry")
    parser.add_argument("action", choices=["promote", "rollback"])
    parser.add_argument("model_name")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--env", default="base", help="Kedro env whose registry gates apply")
    args = parser.parse_args(argv)
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from magicapture_pipeline.hooks import resolve_tracking_uri

    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=args.env) as session:
        params = session.load_context().params
    # Kedro 1.7 hands typed parameters (nodes annotated with a pydantic model) over as models
    config = RegistryConfig.model_validate(params.get("registry") or {})
    config = config.model_copy(update={"model_name": args.model_name})
    tracking = params.get("tracking") or {}
    tracking = tracking.model_dump() if hasattr(tracking, "model_dump") else tracking
    client = client_for(resolve_tracking_uri(project, tracking.get("tracking_uri")))
    result = (
        promote(client, args.model_name, args.version, config)
        if args.action == "promote"
        else rollback(client, args.model_name, config)
    )
    print(json.dumps(result, indent=2))  # noqa: T201 - a command-line answer


if __name__ == "__main__":
    main()
