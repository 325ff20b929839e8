"""Offline generation from a registered concept: a table of prompts in, images and records out.

The model is loaded from the registry (``models:/magicapture-<concept>@<alias>``) exactly as
``mlflow models serve`` loads it, so a batch draws what the service would draw. The whole table
is validated before the first image (same rules as a request, without the per-request row cap),
then sampled in chunks of at most ``max_rows`` rows.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from magicapture_pipeline.serving.concept_model import decode_image
from magicapture_pipeline.tracking.uris import tracking


def load_registered(model_uri: str, tracking_uri: str | None) -> Any:
    """``mlflow.pyfunc.load_model(model_uri)`` against ``tracking_uri`` (None: MLflow's default)."""
    import mlflow.pyfunc

    with tracking(tracking_uri):
        return mlflow.pyfunc.load_model(model_uri)


def model_version(model_uri: str, tracking_uri: str | None) -> str | None:
    """The version number behind ``models:/name@alias`` or ``models:/name/3`` (else None)."""
    from mlflow import MlflowClient

    target = model_uri.removeprefix("models:/")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if "@" in target:
        name, alias = target.split("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    parts = target.split("/")
    return parts[1] if len(parts) == 2 and parts[1].isdigit() else None


def sample_table(
    model: Any, prompts: pd.DataFrame, chunk_rows: int | None = None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every row of ``prompts`` through ``model.predict``, validated first, in chunks.

    Rows without a seed get ``sampling.seed + row`` over the whole table (as ``generate``
    numbers its images), so chunking never repeats a seed.

    Returns:
        ``{key: PIL image with its provenance chunk}`` and one record per image.
    """
    concept_model = model.unwrap_python_model()
    config = model.model_config or {}
    frame = prompts.reset_index(drop=True).copy()
    seed = int(config.get("sampling", {}).get("seed", 0))
    defaults = pd.Series(range(seed, seed + len(frame)), dtype="int64")
    frame["seed"] = frame["seed"].fillna(defaults) if "seed" in frame else defaults
    concept_model.validate(frame, max_rows=len(frame))  # refuses before any work
    frame["seed"] = frame["seed"].astype("int64")  # checked integral above; the schema wants long
    chunk = chunk_rows or int(config.get("limits", {}).get("max_rows", 1))
    outputs = [model.predict(frame.iloc[i : i + chunk]) for i in range(0, len(frame), chunk)]
    out = pd.concat(outputs, ignore_index=True)
    keys = [f"b{index:04d}" for index in range(len(out))]
    images = {key: decode_image(text, keep_metadata=True) for key, text in zip(keys, out["image"])}
    records = out.drop(columns=["image"]).assign(key=keys)
    return images, records[["key", *[c for c in records.columns if c != "key"]]]
