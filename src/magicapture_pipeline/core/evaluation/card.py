"""The concept card (issue 20): one page per concept that says what was learnt and how well.

Rows: the source photos and the references it trained on; the exported step's validation images
beside the last step's; the validation curves (held-out and training identity, style, copy check,
faces found) with the exported step marked; the final metrics with their 95 % intervals
(mean +- 1.96 x the standard error the protocol reports as ``<metric>_se``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from PIL import Image

CURVES = ("csim_*_heldout", "csim_*", "style_similarity", "copy_check_*_gap", "face_detected_rate")
THUMBS = 6  # images per row at most


def _curve_columns(history: pd.DataFrame) -> list[str]:
    import fnmatch

    found = []
    for pattern in CURVES:
        for column in sorted(history.columns, key=lambda c: (len(c), c)):
            numeric = pd.to_numeric(history[column], errors="coerce")
            wanted = fnmatch.fnmatchcase(column, pattern) and not column.endswith(("_se", "_n"))
            if wanted and column not in found and numeric.notna().any():
                found.append(column)
                break
    return found


def metric_lines(metrics: Mapping[str, Any], limit: int = 14) -> list[str]:
    """``name = mean +- half-width (95 %)`` where ``<name>_se`` exists, else ``name = value``."""
    lines = []
    for key, value in sorted(metrics.items()):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or key.endswith(("_se", "_n")) or math.isnan(float(value)):
            continue
        se, n = metrics.get(f"{key}_se"), metrics.get(f"{key}_n")
        count = f", n = {int(n)}" if isinstance(n, int | float) and not math.isnan(n) else ""
        if isinstance(se, int | float) and not math.isnan(float(se)):
            lines.append(f"{key} = {value:.3f} +- {1.96 * se:.3f} (95 %{count})")
        else:
            lines.append(f"{key} = {value:.3f}{f' ({count[2:]})' if count else ''}")
    return lines[:limit]


def _row(ax_row: Sequence[Any], images: Sequence[Image.Image], title: str) -> None:
    for index, ax in enumerate(ax_row):
        ax.axis("off")
        if index < len(images):
            ax.imshow(images[index].convert("RGB"))
    ax_row[0].set_title(title, loc="left", fontsize=9)


def concept_card(  # noqa: PLR0913 (the card's parts)
    name: str,
    sources: Sequence[Image.Image],
    references: Sequence[Image.Image],
    images_by_step: Mapping[int, Mapping[str, Image.Image]],
    history: pd.DataFrame,
    metrics: Mapping[str, Any],
) -> Image.Image:
    """The card as a PIL image (``history``: the stage's validation history, ``images_by_step``:
    its images without the grid, ``metrics``: ``metrics.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marked = "exported" in history and "step" in history  # a missing history loads empty
    exported = history.loc[history["exported"] == 1, "step"] if marked else ()
    exported_step = int(exported.iloc[-1]) if len(exported) else None
    last_step = max(images_by_step) if images_by_step else None
    columns = THUMBS
    # constrained layout: no band of white under the title, the curves' axis label clear of the
    # metrics text below it (the README's card showed both with a fixed grid)
    fig = plt.figure(figsize=(2 * columns, 14), layout="constrained")
    grid = fig.add_gridspec(6, columns, height_ratios=[1, 1, 1, 1, 1.3, 1.2])
    _row([fig.add_subplot(grid[0, c]) for c in range(columns)], sources, "source photos")
    _row([fig.add_subplot(grid[1, c]) for c in range(columns)], references, "references")
    for row, (step, label) in enumerate(((exported_step, "exported"), (last_step, "last"))):
        shown = [v for k, v in sorted((images_by_step.get(step) or {}).items()) if k != "grid"]
        title = f"{label} step {step}" if step is not None else f"{label}: no validation images"
        _row([fig.add_subplot(grid[2 + row, c]) for c in range(columns)], shown, title)
    curves = fig.add_subplot(grid[4, :])
    columns_found = _curve_columns(history) if len(history) else []
    for column in columns_found:
        values = pd.to_numeric(history[column], errors="coerce")
        curves.plot(history["step"], values, marker="o", label=column)
    if exported_step is not None:
        curves.axvline(exported_step, color="grey", linestyle="--", label="exported step")
    curves.set_xlabel("step")
    curves.set_title("validation during training (stage two)", loc="left", fontsize=9)
    if columns_found or exported_step is not None:
        curves.legend(fontsize=7)
    else:
        curves.text(0.5, 0.5, "no validation scores (validation off, or no history)", ha="center")
    text = fig.add_subplot(grid[5, :])
    text.axis("off")
    reason = ""
    if exported_step is not None:
        reason = str(history.loc[history["exported"] == 1, "export_reason"].iloc[-1])
    body = "\n".join([f"exported step: {exported_step} ({reason})", *metric_lines(metrics)])
    text.text(0, 1, body, va="top", family="monospace", fontsize=8)
    fig.suptitle(f"concept card: {name}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
