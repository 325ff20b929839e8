"""The benchmark's comparison table, shaped like the paper's Table 1 / Table 3.

Our numbers and the paper's sit in separate columns (``paper_*``); our CSIM columns are named
after the recognizer that produced them (``csim_arcface``, ``csim_dlib``, or
``csim_arcface_same_as_loss`` when the recognizer is the network the identity loss trained
against), so numbers of two recognizers never share a column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TABLE_METRICS = ("csim", "style_similarity", "aesthetic_score", "face_detected_rate")
PAPER_COLUMNS = ("csim", "style", "aesthetic")
# Means reported with ``_se`` (standard error) and ``_n`` beside them (the CSIM columns too).
MEAN_COLUMNS = ("style_similarity", "aesthetic_score")


def _csim_names(metrics: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The reported CSIM key (training photos) and its held-out counterpart, if any."""
    info = metrics.get("info") or {}
    name = info.get("csim_metric")
    if name is None:
        name = next((k for k in ("csim_arcface", "csim_dlib") if k in metrics), None)
    if name is None:
        backend = info.get("csim_backend")
        return (f"csim_{backend}" if backend else None), None
    return name, f"{name}_heldout"


def comparison_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: our numbers, the paper's (separate columns), status and reasons.

    Each result is ``{"name", "method", "status", "metrics": {...} | None, "paper": {...}}``
    (``paper``: ``csim`` / ``style`` / ``aesthetic`` and ``source``, e.g. "paper Table 1").
    """
    names = {_csim_names(r.get("metrics") or {})[0] for r in results} - {None}
    common = next(iter(names)) if len(names) == 1 else None
    rows = []
    for result in results:
        metrics = result.get("metrics") or {}
        name, heldout = _csim_names(metrics)
        name = name or common
        row: dict[str, Any] = {"variant": result["name"], "method": result["method"]}
        columns = [(name or "csim", name), (f"{name or 'csim'}_heldout", heldout)]
        columns += [(metric, metric) for metric in TABLE_METRICS[1:]]
        for column, key in columns:
            row[column] = metrics.get(key) if key else None
            if column in MEAN_COLUMNS or column.startswith("csim"):
                # every mean with its n and standard error (issue 18 §4)
                row[f"{column}_se"] = metrics.get(f"{key}_se") if key else None
                n = metrics.get(f"{key}_n") if key else None
                row[f"{column}_n"] = int(n) if n is not None else None
        paper = result.get("paper") or {}
        for column in PAPER_COLUMNS:
            row[f"paper_{column}"] = paper.get(column)
        row["paper_source"] = paper.get("source")
        sampling = result.get("sampling") or {}
        row["lora_scale"] = sampling.get("lora_scale_unet")
        row["masked_losses"] = sampling.get("masked_losses")
        row["cfg"] = sampling.get("guidance_scale")
        row["steps"] = sampling.get("num_inference_steps")
        row["settings_source"] = result.get("settings_source") or None
        row["status"] = result["status"]
        row["unavailable"] = ", ".join(sorted(metrics.get("unavailable") or {}))
        rows.append(row)
    return rows


def comparison_markdown(
    rows: Sequence[Mapping[str, Any]],
    note: str,
    reasons: Mapping[str, str] | None = None,
) -> str:
    """The comparison as a markdown table (empty cells where a number does not exist).

    ``reasons`` (metric -> why it is unavailable) is listed once under the table.
    """
    if not rows:
        return f"# Comparison (Table 1 shape)\n\nNo variants.\n\n{note}\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Comparison (shaped like the paper's Table 1 and Table 3)",
        "",
        "Columns `paper_*` are the paper's numbers (arXiv 2309.06895; `paper_source` names the "
        "table), never ours; our CSIM columns name the recognizer that produced them, and "
        "`*_heldout` scores against source photos that training never saw; `*_se` is the "
        "standard error of the mean over `*_n` images. An empty cell means "
        "the number does not exist (see `status` / `unavailable`).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    if reasons:
        lines += ["", "Why a metric is unavailable:", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(reasons.items())]
    return "\n".join([*lines, "", note, ""])


def unavailable_reasons(results: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Every distinct ``metric -> reason`` over the results (first reason seen per metric)."""
    reasons: dict[str, str] = {}
    for result in results:
        for name, why in ((result.get("metrics") or {}).get("unavailable") or {}).items():
            reasons.setdefault(name, why)
    return reasons
