"""The evaluation's figure: per-image bars of every metric, one panel per metric."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def metrics_figure(per_image_metrics: pd.DataFrame) -> Any:
    """Per-image bars of every numeric metric, one panel per metric, one colour per image set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = per_image_metrics.copy()
    numeric = [
        c
        for c in frame.columns
        if c not in ("image", "image_set")
        and not pd.api.types.is_bool_dtype(frame[c])
        and pd.to_numeric(frame[c], errors="coerce").notna().any()
    ]
    fig, axes = plt.subplots(max(1, len(numeric)), 1, figsize=(8, 2.5 * max(1, len(numeric))))
    axes = np.atleast_1d(axes)
    if not numeric:
        axes[0].text(
            0.5,
            0.5,
            "no metric could be computed (see metrics.json 'unavailable')",
            ha="center",
            va="center",
        )
        axes[0].axis("off")
    for ax, column in zip(axes, numeric, strict=False):
        values = frame.assign(**{column: pd.to_numeric(frame[column], errors="coerce")})
        table = values.pivot_table(index="image", columns="image_set", values=column)
        table.plot.bar(ax=ax, legend=True)
        ax.set_title(column)
        ax.set_xlabel("")
    fig.tight_layout()
    return fig
