"""Figures of training: attention heatmaps (stage two) and loss curves (both stages).

Drawn with matplotlib's object API (``matplotlib.figure.Figure`` rendered by the Agg canvas), not
pyplot: no global backend switch and no pyplot state, so figures are safe to draw from threads
(Kedro's threaded runner)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pandas as pd


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _figure_image(fig: Any, dpi: int) -> Any:
    """Render a matplotlib figure to an RGB PIL image."""
    from PIL import Image

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def heatmap_figure(report: Mapping[str, Any], step: int) -> Any:
    """A PIL image: per reference image, the picture, [V1] map, face mask, [V2] map, non-face."""
    maps, face, images = report["maps"], report["face_masks"], report["images"]
    rows = min(len(maps), 4)
    titles = ["image", "[V1] map", "face mask", "[V2] map", "non-face mask"]
    fig = _figure((10, 2.1 * rows))
    axes = fig.subplots(rows, 5, squeeze=False)
    for r in range(rows):
        panels = [
            ((images[r].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(),
            maps[r, 0].numpy(),
            face[r, 0].numpy(),
            maps[r, 1].numpy(),
            1 - face[r, 0].numpy(),
        ]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            if c == 0:
                ax.imshow(panel)
            elif c in (2, 4):  # masks on a fixed 0..1 scale (an all-ones mask stays bright)
                ax.imshow(panel, cmap="viridis", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(panel, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.suptitle(
        f"step {step}: [V1] mass in face {report['v1_mass_in_face']:.3f}, "
        f"[V2] mass outside face {report['v2_mass_outside_face']:.3f}",
        fontsize=9,
    )
    return _figure_image(fig, dpi=80)


def loss_curves_figure(history: pd.DataFrame, title: str, smooth: int = 10) -> Any:
    """A PIL image of every loss term against the optimiser step (raw, and a running mean).

    Args:
        history: the per-step table a trainer returns (``step`` plus ``loss*`` columns).
        title: the figure title (e.g. the stage).
        smooth: window of the running mean drawn over the raw curve.
    """
    columns = [c for c in history.columns if c.startswith("loss")]
    fig = _figure((7, 3.6))
    ax = fig.subplots()
    for column in columns:
        values = pd.to_numeric(history[column], errors="coerce")
        (line,) = ax.plot(history["step"], values, alpha=0.25, linewidth=0.8)
        ax.plot(
            history["step"],
            values.rolling(smooth, min_periods=1).mean(),
            color=line.get_color(),
            label=column,
        )
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    if columns:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _figure_image(fig, dpi=90)
