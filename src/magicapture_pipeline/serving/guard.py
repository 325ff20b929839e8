"""The serving guard: MLflow's scoring server behind checks MLflow cannot make (``make serve``).

``mlflow models serve`` parses a whole request before the model sees it: it reads any body size,
answers a missing ``Content-Type`` or a 100,000-deep JSON with 500, and its schema coercion turns
``steps: 10.5`` into 10, ``seed: true`` into 1, ``seed: "7"`` into 7 and ``seed: 1e30`` into
-9223372036854775808, and drops unknown columns, so the model cannot tell what was sent. This
module serves the same scoring app (``mlflow.pyfunc.scoring_server.init``, same ``/invocations``,
``/ping``, ``/health``, ``/version``) wrapped in :class:`RequestGuard`, which checks
``POST /invocations`` as sent, before MLflow parses it:

* ``Content-Type`` must be ``application/json`` (415 otherwise; CSV is refused because its values
  have no types to check);
* the body is at most ``limits.max_body_bytes`` (413, never kept in memory) and valid UTF-8 JSON no
  deeper than the request format needs (400);
* the payload is ``{"dataframe_records": [...]}`` or ``{"dataframe_split": {"columns", "data"}}``
  with at most ``limits.max_rows`` rows; columns are only ``prompt``, ``seed``, ``steps``,
  ``guidance_scale``; ``prompt`` is a string of at most ``limits.max_prompt_chars`` characters,
  ``seed`` and ``steps`` JSON integers (not 10.5, ``true`` or ``"7"``), ``seed`` within
  [0, 2**63 - 1], ``guidance_scale`` a finite JSON number (400, every problem named).

The value ranges (steps, guidance, the prompt's tokens) stay with the model
(``requests.validate_request``), which every caller of the model runs. The limits are the
registered model's (its config's ``limits``). Run it with::

    python -m magicapture_pipeline.serving.guard -m models:/magicapture-demo@champion \\
        --host 127.0.0.1 --port 5001 --workers 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

from magicapture_pipeline.config.serving import MAX_SEED, ServingLimits

MODEL_URI_ENV = "MAGICAPTURE_SERVE_MODEL_URI"
COLUMNS = ("prompt", "seed", "steps", "guidance_scale")
FORMATS = ("dataframe_records", "dataframe_split")
DRAIN_BYTES = 64 * 1024 * 1024  # an oversized body up to this is read and dropped (see _read)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Refusal(Exception):
    """A request the guard answers itself: HTTP ``status`` and a message naming the rule."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _rows(payload: Any, limits: ServingLimits) -> list[dict[str, Any]]:
    """The request's rows as sent, or :class:`Refusal` for a payload of the wrong shape."""
    formats = f"one of {list(FORMATS)}"
    if not isinstance(payload, dict) or len(payload) != 1 or next(iter(payload)) not in FORMATS:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise Refusal(400, f"the body must be a JSON object with {formats} only; got {keys}")
    ((kind, body),) = payload.items()
    if kind == "dataframe_records":
        if not isinstance(body, list) or not all(isinstance(row, dict) for row in body):
            raise Refusal(400, "'dataframe_records' must be a list of objects (one per image)")
        rows = body
    else:
        if not isinstance(body, dict) or set(body) - {"columns", "data", "index"}:
            raise Refusal(400, "'dataframe_split' must be an object with 'columns' and 'data'")
        columns, data = body.get("columns"), body.get("data")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise Refusal(400, "'dataframe_split.columns' must be a list of column names")
        if not isinstance(data, list) or not all(
            isinstance(row, list) and len(row) == len(columns) for row in data
        ):
            raise Refusal(400, f"'dataframe_split.data' must be rows of {len(columns)} values")
        rows = [dict(zip(columns, row, strict=True)) for row in data]
    if not rows:
        raise Refusal(400, "the request has no rows; send at least one prompt")
    if len(rows) > limits.max_rows:
        raise Refusal(
            400,
            f"{len(rows)} rows in one request; at most {limits.max_rows} (serving.limits.max_rows)",
        )
    return rows


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_payload(payload: Any, limits: ServingLimits) -> list[str]:
    """Every problem of a parsed request, each naming the row, the field and the rule."""
    problems = []
    for index, row in enumerate(_rows(payload, limits)):
        where = f"row {index}"
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            problems.append(f"{where}: unknown column(s) {unknown}; allowed: {list(COLUMNS)}")
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            problems.append(f"{where}: 'prompt' must be a string; got {_kind(prompt)}")
        elif len(prompt) > limits.max_prompt_chars:
            problems.append(
                f"{where}: 'prompt' is {len(prompt)} characters; the limit is "
                f"{limits.max_prompt_chars} (serving.limits.max_prompt_chars)"
            )
        for name in ("seed", "steps"):
            if name in row and not _integer(row[name]):
                problems.append(
                    f"{where}: '{name}' must be a JSON integer; got {_kind(row[name])} "
                    f"{json.dumps(row[name])[:40]} (nothing is rounded or converted)"
                )
        if "seed" in row and _integer(row["seed"]) and not 0 <= row["seed"] <= MAX_SEED:
            problems.append(f"{where}: 'seed' is {row['seed']}; it must be in [0, {MAX_SEED}]")
        if (
            "steps" in row
            and _integer(row["steps"])
            and not -MAX_SEED - 1 <= row["steps"] <= MAX_SEED
        ):
            problems.append(f"{where}: 'steps' is {row['steps']}; it must fit a 64-bit integer")
        if "guidance_scale" in row:
            value = row["guidance_scale"]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value):
                problems.append(
                    f"{where}: 'guidance_scale' must be a finite JSON number; got "
                    f"{_kind(value)} {json.dumps(value)[:40]}"
                )
    return problems


def _kind(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", float: "a float", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def parse_body(body: bytes, content_type: str | None, limits: ServingLimits) -> None:
    """Raise :class:`Refusal` unless ``body`` is a request the scoring server may parse."""
    mime, _, parameters = (content_type or "").partition(";")
    if mime.strip().lower() != "application/json":
        got = repr(content_type) if content_type else "none"
        raise Refusal(415, f"the Content-Type header must be application/json; got {got}")
    if parameters.strip() and parameters.strip().lower().replace(" ", "") != "charset=utf-8":
        raise Refusal(415, f"the Content-Type header allows only charset=utf-8; got {parameters}")
    if len(body) > limits.max_body_bytes:
        raise Refusal(413, _too_large(limits))
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise Refusal(
            400, f"the body is not UTF-8 ({error.reason} at byte {error.start})"
        ) from None
    except RecursionError:
        raise Refusal(400, "the body's JSON is nested too deeply for a request") from None
    except json.JSONDecodeError as error:
        raise Refusal(400, f"the body is not valid JSON: {error.msg} at character {error.pos}")
    problems = check_payload(payload, limits)
    if problems:
        raise Refusal(400, "Request refused: " + "; ".join(problems))


def _too_large(limits: ServingLimits) -> str:
    return f"the body is larger than {limits.max_body_bytes} bytes (serving.limits.max_body_bytes)"


class RequestGuard:
    """ASGI middleware: refuses a bad ``POST /invocations`` before ``app`` reads any of it."""

    def __init__(self, app: Callable, limits: ServingLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["path"].rstrip("/") == "/invocations"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._read(headers, receive)
            parse_body(body, headers.get("content-type"), self.limits)
        except Refusal as refusal:
            await _answer(send, refusal)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, headers: dict[str, str], receive: Receive) -> bytes:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            # A client that sent "Expect: 100-continue" (curl does for large bodies) gets the 413
            # before it sends the body. One that sends it anyway would see its connection reset
            # if the answer came first: read and drop up to DRAIN_BYTES of it, then answer.
            if headers.get("expect", "").lower() != "100-continue" and int(length) <= DRAIN_BYTES:
                await _drain(receive)
            raise Refusal(413, _too_large(self.limits))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refusal(400, "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise Refusal(413, _too_large(self.limits))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def _answer(send: Send, refusal: Refusal) -> None:
    codes = {413: "REQUEST_LIMIT_EXCEEDED", 415: "INVALID_PARAMETER_VALUE"}
    body = json.dumps(
        {
            "error_code": codes.get(refusal.status, "INVALID_PARAMETER_VALUE"),
            "message": refusal.message,
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app() -> RequestGuard:
    """The guarded scoring app of the model at ``$MAGICAPTURE_SERVE_MODEL_URI`` (uvicorn factory).
    """
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(os.environ[MODEL_URI_ENV])
    limits = ServingLimits.model_validate((model.model_config or {}).get("limits") or {})
    return RequestGuard(scoring_server.init(model), limits)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model-uri", required=True, help="models:/NAME@ALIAS or a path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    import uvicorn

    os.environ[MODEL_URI_ENV] = args.model_uri
    uvicorn.run(
        "magicapture_pipeline.serving.guard:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
    )


if __name__ == "__main__":
    main()
