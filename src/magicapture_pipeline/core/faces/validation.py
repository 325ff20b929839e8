"""Validation of a face set before training (great-expectations, ephemeral context).

Every rule runs on the ``face_metadata`` table and reports every file that breaks it. Rules that
compare images with each other are turned into per-row columns first (``min_phash_distance``, the
Hamming distance to the nearest other image; ``identity_distance`` is filled by preprocessing), so
each rule is a plain great-expectations column or table expectation.

:func:`validate_face_metadata` returns a JSON-able report; :func:`raise_if_failed` turns a failed
report into :class:`ValidationFailed`, whose message has one line per offending file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from magicapture_pipeline.config.preprocess import ValidationConfig
from magicapture_pipeline.core.faces.quality import hamming

SOURCE, REFERENCE = "source", "reference"


@dataclass(frozen=True)
class Rule:
    """One validation rule: which rows, which column, the allowed range, and what it means."""

    name: str
    scope: str  # "source", "reference" or "all"
    column: str | None  # None: a row-count rule on the scope
    low: float | None
    high: float | None
    description: str

    def allowed(self) -> str:
        if self.name == "image_decodes":
            return "a readable image"
        low = "-inf" if self.low is None else _fmt(self.low)
        high = "inf" if self.high is None else _fmt(self.high)
        return f"[{low}, {high}]"


class ValidationFailed(RuntimeError):
    """A face set broke validation rules; the message has one line per offending file."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report
        lines = [
            f"face set failed validation: {len(report['failures'])} problem(s) "
            f"(every rule and file: the validation_report dataset, by default "
            f"data/08_reporting/<concept>/validation_report.json)"
        ]
        for item in report["failures"]:
            lines.append(
                f"  {item['file']}: {item['rule']}: value {item['value']}, "
                f"allowed {item['allowed']}"
            )
        super().__init__("\n".join(lines))


def rules_from_config(config: ValidationConfig) -> list[Rule]:
    """The rule table, with its bounds taken from ``config``."""
    return [
        Rule("image_decodes", "all", "status", None, None,
             "every file decodes to an image (not empty, truncated, too small or a bomb)"),
        Rule("exactly_one_face", SOURCE, "n_faces", 1, 1,
             "each source photo shows exactly one face"),
        Rule("face_score", SOURCE, "face_score", config.min_face_score, 1.0,
             "the source face is detected with enough confidence"),
        Rule("face_area_fraction", SOURCE, "face_area_fraction", config.min_face_area_fraction,
             config.max_face_area_fraction, "face box area / photo area is in range"),
        Rule("image_side", "all", "min_side", config.min_image_side, None,
             "the shorter photo side is large enough for the crop resolution"),
        Rule("mask_coverage", SOURCE, "mask_coverage", config.min_mask_coverage,
             config.max_mask_coverage, "the face mask covers a sane share of the crop"),
        Rule("no_near_duplicates", "all", "min_phash_distance", config.min_phash_distance, 64,
             "no two images are near-duplicates (pHash Hamming distance)"),
        Rule("same_person", SOURCE, "identity_distance", 0.0, config.max_identity_distance,
             "every source face is close to the set's median face embedding (dlib L2)"),
        Rule("source_count", SOURCE, None, config.min_source_images, config.max_source_images,
             "number of source photos"),
        Rule("reference_count", REFERENCE, None, config.min_reference_images,
             config.max_reference_images, "number of reference (style) images"),
    ]


def add_derived_columns(metadata: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``min_side`` and ``min_phash_distance`` / ``nearest_duplicate`` per row."""
    table = metadata.copy()
    table["key"] = table["role"].astype(str) + "/" + table["id"].astype(str)
    table["min_side"] = table[["width", "height"]].min(axis=1)
    hashes = {
        row.key: row.phash
        for row in table.itertuples()
        if isinstance(row.phash, str) and row.phash
    }
    keys = list(hashes)
    nearest: dict[str, tuple[float, str]] = {}
    for index, key in enumerate(keys):
        for other in keys[index + 1 :]:
            distance = float(hamming(hashes[key], hashes[other]))
            for a, b in ((key, other), (other, key)):
                if a not in nearest or distance < nearest[a][0]:
                    nearest[a] = (distance, b)
    table["min_phash_distance"] = [nearest.get(k, (math.nan, ""))[0] for k in table["key"]]
    table["nearest_duplicate"] = [nearest.get(k, (math.nan, ""))[1] for k in table["key"]]
    return table


def validate_face_metadata(metadata: pd.DataFrame, config: ValidationConfig) -> dict[str, Any]:
    """Run every rule on ``metadata`` and report each rule and each failing file.

    Returns:
        ``{"success", "n_source", "n_reference", "rules": [...], "failures": [...],
        "files": {"<role>/<id>": {...}}}``; each failure is ``{file, key, id, role, rule, value,
        allowed}``.
    """
    table = add_derived_columns(metadata)
    rules = rules_from_config(config)
    results = _run_gx(table, rules)
    names = dict(zip(table["key"], table["path"].map(_file_name), strict=True))
    ids = dict(zip(table["key"], table["id"], strict=True))
    roles = dict(zip(table["key"], table["role"], strict=True))
    nearest = dict(zip(table["key"], table["nearest_duplicate"], strict=True))
    failures: list[dict[str, Any]] = []
    rule_reports = []
    for rule in rules:
        success, offenders, observed = results[rule.name]
        for key, value in offenders:
            if rule.name == "image_decodes":
                shown = _reason(table, key)
            elif rule.name == "no_near_duplicates":
                shown = f"{_fmt(value)} (nearest: {names.get(nearest.get(key), '?')})"
            else:
                shown = _fmt(value)
            failures.append({
                "file": names.get(key, key), "key": key, "id": ids.get(key),
                "role": roles.get(key), "rule": rule.name, "value": shown,
                "allowed": rule.allowed(),
            })
        if rule.column is None and not success:
            failures.append({
                "file": f"<{rule.scope} folder>", "key": None, "id": None, "role": rule.scope,
                "rule": rule.name, "value": observed, "allowed": rule.allowed(),
            })
        rule_reports.append({
            "rule": rule.name, "scope": rule.scope, "column": rule.column,
            "allowed": rule.allowed(), "description": rule.description, "success": success,
            "observed": observed,
            "failing_files": [names.get(k, k) for k, _ in offenders],
        })
    files = {
        row.key: {
            "file": names[row.key], "id": row.id, "role": row.role, "path": row.path,
            "status": row.status,
            "failed_rules": sorted({f["rule"] for f in failures if f["key"] == row.key}),
        }
        for row in table.itertuples()
    }
    return {
        "success": not failures,
        "n_source": int((table["role"] == SOURCE).sum()),
        "n_reference": int((table["role"] == REFERENCE).sum()),
        "rules": rule_reports,
        "failures": failures,
        "files": files,
    }


def raise_if_failed(report: dict[str, Any]) -> None:
    """Raise :class:`ValidationFailed` (one line per offending file) when the report failed."""
    if not report["success"]:
        raise ValidationFailed(report)


def _run_gx(
    table: pd.DataFrame, rules: list[Rule]
) -> dict[str, tuple[bool, list[tuple[str, Any]], Any]]:
    """Run the rules with great-expectations; per rule: success, [(id, value)], observed."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm on stderr
    batch = (
        context.data_sources.add_pandas("face_metadata")
        .add_dataframe_asset("face_metadata")
        .add_batch_definition_whole_dataframe("whole_table")
    )
    decoded = table[table["status"] != "decode_error"]
    frames = {
        "all": table,
        SOURCE: decoded[decoded["role"] == SOURCE],
        REFERENCE: table[table["role"] == REFERENCE],
    }
    counted = {SOURCE: table[table["role"] == SOURCE], REFERENCE: frames[REFERENCE]}
    outcome: dict[str, tuple[bool, list[tuple[str, Any]], Any]] = {}
    for scope in ("all", SOURCE, REFERENCE):
        scoped = [r for r in rules if r.scope == scope]
        if not scoped:
            continue
        for kind, frame in (("rows", frames[scope]), ("count", counted.get(scope))):
            chosen = [r for r in scoped if (r.column is None) == (kind == "count")]
            if not chosen or frame is None:
                continue
            suite = context.suites.add(
                gx.ExpectationSuite(
                    name=f"{scope}_{kind}",
                    expectations=[_expectation(gxe, rule) for rule in chosen],
                )
            )
            validation = gx.ValidationDefinition(name=f"{scope}_{kind}", data=batch, suite=suite)
            result = validation.run(
                batch_parameters={"dataframe": frame.reset_index(drop=True)},
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": ["key"],
                },
            )
            for item in result.results:
                rule_name = item.expectation_config.meta["rule"]
                rule = next(r for r in chosen if r.name == rule_name)
                if item.exception_info and item.exception_info.get("raised_exception"):
                    message = item.exception_info.get("exception_message")
                    raise RuntimeError(f"validation rule {rule_name} could not run: {message}")
                offenders = [
                    (entry["key"], entry.get(rule.column))
                    for entry in item.result.get("unexpected_index_list") or []
                ]
                observed = item.result.get("observed_value")
                outcome[rule_name] = (bool(item.success), offenders, observed)
    return outcome


def _expectation(gxe: Any, rule: Rule) -> Any:
    meta = {"rule": rule.name}
    if rule.name == "image_decodes":
        return gxe.ExpectColumnValuesToNotBeInSet(
            column="status", value_set=["decode_error"], meta=meta
        )
    if rule.column is None:
        return gxe.ExpectTableRowCountToBeBetween(
            min_value=rule.low, max_value=rule.high, meta=meta
        )
    return gxe.ExpectColumnValuesToBeBetween(
        column=rule.column, min_value=rule.low, max_value=rule.high, meta=meta
    )


def split_heldout_sources(
    source_ids: Sequence[str], n_heldout: int, min_sources: int
) -> tuple[list[str], list[str]]:
    """Source ids to train on and to hold out (the last ``n_heldout`` in sorted id order).

    Nothing is held out below ``min_sources`` photos, and at least ``min_sources - n_heldout``
    (never fewer than one) photos always train.
    """
    ordered = sorted(str(i) for i in source_ids)
    if n_heldout <= 0 or len(ordered) < min_sources:
        return ordered, []
    keep = max(1, len(ordered) - n_heldout)
    return ordered[:keep], ordered[keep:]


def _reason(table: pd.DataFrame, key: str) -> str:
    reason = table.loc[table["key"] == key, "reason"]
    return str(reason.iloc[0]) if len(reason) else "?"


def _file_name(path: Any) -> str:
    text = str(path)
    return text.replace("\\", "/").rsplit("/", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)
