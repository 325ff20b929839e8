"""The serving guard's checks, fast (the real server answers them in test_scoring_server.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from magicapture_pipeline.config.generation import SamplingConfig
from magicapture_pipeline.config.serving import ServingLimits
from magicapture_pipeline.serving.guard import Refusal, parse_body
from magicapture_pipeline.serving.requests import RequestRefused, validate_request

LIMITS = ServingLimits(max_rows=2, max_prompt_chars=50, max_body_bytes=4096)
JSON = "application/json"


def refusal(body: bytes, content_type: str | None = JSON) -> Refusal:
    with pytest.raises(Refusal) as caught:
        parse_body(body, content_type, LIMITS)
    return caught.value


def rows(*records: dict) -> bytes:
    return json.dumps({"dataframe_records": list(records)}).encode()


def test_a_good_request_passes_in_both_formats():
    parse_body(rows({"prompt": "a [V1]", "seed": 7, "steps": 3, "guidance_scale": 2}), JSON, LIMITS)
    split = {"dataframe_split": {"columns": ["prompt", "seed"], "data": [["a", 1], ["b", 2]]}}
    parse_body(json.dumps(split).encode(), "application/json; charset=utf-8", LIMITS)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 10.5, "row 0: 'steps' must be a JSON integer; got a float 10.5"),
        ("steps", 10.0, "row 0: 'steps' must be a JSON integer; got a float 10.0"),
        ("seed", True, "row 0: 'seed' must be a JSON integer; got a boolean true"),
        ("seed", "7", "row 0: 'seed' must be a JSON integer; got a string \"7\""),
        ("seed", 1e30, "row 0: 'seed' must be a JSON integer; got a float 1e+30"),
        ("seed", 2**64, "row 0: 'seed' is 18446744073709551616; it must be in [0, 9223372"),
        ("seed", None, "row 0: 'seed' must be a JSON integer; got null"),
        ("guidance_scale", "7", "'guidance_scale' must be a finite JSON number; got a string"),
        ("guidance_scale", False, "'guidance_scale' must be a finite JSON number; got a boolean"),
        ("prompt", 5, "row 0: 'prompt' must be a string; got a int"),
        ("prompt", "x" * 51, "row 0: 'prompt' is 51 characters; the limit is 50"),
        ("width", 4096, "row 0: unknown column(s) ['width']"),
    ],
)
def test_types_are_checked_as_sent(field, value, message):
    record = {"prompt": "a [V1]", field: value}
    error = refusal(rows(record))
    assert error.status == 400 and message in error.message


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (rows({"prompt": "x"}), None, 415, "Content-Type header must be application/json; got no"),
        (b"prompt\nx\n", "text/csv", 415, "got 'text/csv'"),
        (rows({"prompt": "x"}), "application/json; charset=latin-1", 415, "charset=utf-8"),
        (b"x" * 4097, JSON, 413, "larger than 4096 bytes (serving.limits.max_body_bytes)"),
        (b"[" * 2000 + b"]" * 2000, JSON, 400, "nested too deeply"),
        (b'{"dataframe_records": [{"prompt": "\xff"}]}', JSON, 400, "not UTF-8"),
        (b'{"dataframe_records": [', JSON, 400, "not valid JSON"),
        (b'{"dataframe_records": [{"prompt": "x", "guidance_scale": NaN}]}', JSON, 400, "finite"),
        (rows({"prompt": "x"}, {"prompt": "y"}, {"prompt": "z"}), JSON, 400, "3 rows in one"),
        (rows(), JSON, 400, "no rows"),
        (b'{"instances": ["x"]}', JSON, 400, "['dataframe_records', 'dataframe_split'] only"),
        (b'{"dataframe_records": [], "params": {}}', JSON, 400, "only; got ['dataframe_records'"),
        (b'{"dataframe_split": {"columns": ["p"], "data": [["a", 1]]}}', JSON, 400, "rows of 1"),
    ],
)
def test_bodies_refused_with_their_status(body, content_type, status, message):
    error = refusal(body, content_type)
    assert (error.status, message in error.message) == (status, True), error.message


def test_every_problem_of_every_row_is_named():
    error = refusal(rows({"prompt": "a", "steps": 1.5}, {"prompt": 3, "seed": "1", "x": 1}))
    assert error.message.count("row 1:") == 3 and "row 0: 'steps'" in error.message


def test_model_counts_characters_before_tokenising():
    """A long prompt is refused by its length; the tokenizer never sees it."""

    def tokenizer(prompt: str) -> int:
        raise AssertionError("tokenised a prompt over the character limit")

    with pytest.raises(RequestRefused, match="'prompt' is 51 characters; the limit is 50"):
        validate_request(
            pd.DataFrame([{"prompt": "y" * 51}]),
            LIMITS,
            SamplingConfig(),
            fill_tokens=lambda p: p,
            count_tokens=tokenizer,
            token_limit=77,
        )
