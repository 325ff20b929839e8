"""Request validation for the served concept: every row checked before any image is sampled.

A request is a table (``pandas.DataFrame``; one row per image) with a ``prompt`` column and
optional ``seed``, ``steps`` and ``guidance_scale``. Everything else comes from the registered
sampling settings (``SamplingConfig``), exactly as the ``generate`` pipeline samples. A refused
request raises :class:`RequestRefused`, an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``,
which MLflow's scoring server answers with HTTP 400 and the message; every problem of every row
is listed, so one answer says all that is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from magicapture_pipeline.config.generation import SamplingConfig
from magicapture_pipeline.config.serving import MAX_SEED, ServingLimits

REQUEST_COLUMNS = ("prompt", "seed", "steps", "guidance_scale")


class RequestRefused(MlflowException):
    """A request broke a limit; the message names each row, field, value and the rule."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "Request refused: " + "; ".join(self.problems), error_code=INVALID_PARAMETER_VALUE
        )


@dataclass(frozen=True)
class SampleRequest:
    """One validated row: what will be sampled."""

    prompt: str
    seed: int
    steps: int
    guidance_scale: float


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is an integral number (3 or 3.0), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame([model_input])
    return pd.DataFrame(model_input)


def validate_request(
    model_input: Any,
    limits: ServingLimits,
    sampling: SamplingConfig,
    *,
    fill_tokens: Callable[[str], str],
    count_tokens: Callable[[str], int],
    token_limit: int,
) -> list[SampleRequest]:
    """Check every row of a request and return what to sample, or raise :class:`RequestRefused`.

    Args:
        model_input: the request table (DataFrame, list of dicts or one dict).
        limits: the configured limits.
        sampling: the registered sampling settings; defaults for absent fields (seed defaults to
            ``sampling.seed + row``, as ``generate`` numbers its images).
        fill_tokens: replaces ``[V1]`` / ``[V2]`` by the concept's tokens.
        count_tokens: the text encoder tokenizer's token count (start/end tokens included).
        token_limit: the text encoder's limit (``tokenizer.model_max_length``); a configured
            ``limits.max_prompt_tokens`` can only lower it.
    """
    frame = _as_frame(model_input)
    if len(frame) == 0:
        raise RequestRefused(["the request has no rows; send at least one prompt"])
    if len(frame) > limits.max_rows:
        rule = f"at most {limits.max_rows} (serving.limits.max_rows)"
        raise RequestRefused([f"{len(frame)} rows in one request; {rule}"])
    unknown = sorted(set(map(str, frame.columns)) - set(REQUEST_COLUMNS))
    problems = [f"unknown column(s) {unknown}; allowed: {list(REQUEST_COLUMNS)}"] if unknown else []
    if "prompt" not in frame.columns:
        raise RequestRefused([*problems, "column 'prompt' is required"])
    max_tokens = min(token_limit, limits.max_prompt_tokens or token_limit)
    requests: list[SampleRequest] = []
    for index, row in enumerate(frame.to_dict("records")):
        where = f"row {index}"
        prompt = row.get("prompt")
        if _missing(prompt) or not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{where}: 'prompt' is missing or empty")
            prompt = ""
        elif len(prompt) > limits.max_prompt_chars:
            problems.append(
                f"{where}: 'prompt' is {len(prompt)} characters; the limit is "
                f"{limits.max_prompt_chars} (serving.limits.max_prompt_chars), checked before "
                "tokenising; shorten it, nothing is cut"
            )
            prompt = ""
        else:
            prompt = fill_tokens(prompt)
            tokens = count_tokens(prompt)
            if tokens > max_tokens:
                problems.append(
                    f"{where}: 'prompt' is {tokens} tokens; the limit is {max_tokens} "
                    "(the text encoder's, start/end tokens included); shorten it, nothing is cut"
                )
        seed = _field_int(row, "seed", sampling.seed + index, 0, MAX_SEED, where, problems)
        steps = _field_int(
            row,
            "steps",
            sampling.num_inference_steps,
            limits.min_steps,
            limits.max_steps,
            where,
            problems,
        )
        guidance = _field_float(
            row,
            "guidance_scale",
            sampling.guidance_scale,
            limits.min_guidance,
            limits.max_guidance,
            where,
            problems,
        )
        requests.append(SampleRequest(prompt, seed, steps, guidance))
    if problems:
        raise RequestRefused(problems)
    return requests


def _show(value: Any) -> str:
    """A request value as the user wrote it (JSON numbers arrive as floats in a gappy column)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value.item() if hasattr(value, "item") else value)


def _field_int(
    row: dict, name: str, default: int, low: int, high: int, where: str, problems: list[str]
) -> int:
    raw = row.get(name)
    if _missing(raw):
        return default
    value = _integer(raw)
    if value is None or not low <= value <= high:
        rule = f"it must be an integer in [{low}, {high}]"
        problems.append(f"{where}: '{name}' is {_show(raw)}; {rule}")
        return default
    return value


def _field_float(
    row: dict, name: str, default: float, low: float, high: float, where: str, problems: list[str]
) -> float:
    raw = row.get(name)
    if _missing(raw):
        return default
    ok = isinstance(raw, numbers.Real) and not isinstance(raw, bool) and math.isfinite(float(raw))
    if not ok or not low <= float(raw) <= high:
        rule = f"it must be a number in [{low}, {high}]"
        problems.append(f"{where}: '{name}' is {_show(raw)}; {rule}")
        return default
    return float(raw)
