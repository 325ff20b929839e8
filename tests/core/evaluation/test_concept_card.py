"""The concept card (issue 20): the exported step's images beside the last step's, the
validation curves and the metrics with their intervals, on one page."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from magicapture_pipeline.core.evaluation.card import concept_card, metric_lines

RED, BLUE = (230, 20, 20), (20, 20, 230)


def _solid(colour) -> Image.Image:
    return Image.new("RGB", (32, 32), colour)


def _history() -> pd.DataFrame:
    return pd.DataFrame({
        "step": [40, 80], "csim_dlib_heldout": [0.6, 0.4], "style_similarity": [0.7, 0.72],
        "exported": [1, 0], "export_reason": ["export: best, best csim_*_heldout = 0.6000", ""],
    })  # fmt: skip


def _share(card: Image.Image, colour) -> float:
    pixels = np.asarray(card, dtype=int)
    return float((np.abs(pixels - np.array(colour)).sum(axis=-1) < 30).mean())


def _rows_of(card: Image.Image, colour) -> np.ndarray:
    """Pixel rows of ``card`` holding a solid run of ``colour`` (a thumbnail, not a stray pixel)."""
    pixels = np.asarray(card, dtype=int)
    close = np.abs(pixels - np.array(colour)).sum(axis=-1) < 30
    return np.flatnonzero(close.sum(axis=1) >= 10)


def test_the_card_shows_the_exported_steps_images_and_the_last_steps():
    images = {40: {"grid": _solid(BLUE), "p00_seed0": _solid(RED)}, 80: {"p00_seed0": _solid(BLUE)}}
    card = concept_card("alice", [_solid((0, 200, 0))], [_solid((200, 200, 0))], images,
                        _history(), {"csim_dlib": 0.5, "csim_dlib_se": 0.05, "csim_dlib_n": 4})
    assert card.width > 500 and card.height > 700
    # rows top to bottom: sources (green), references (yellow), exported step (red), last step
    # (blue), curves: each colour's pixel rows lie wholly above the next one's
    spans = [_rows_of(card, colour) for colour in ((0, 200, 0), (200, 200, 0), RED, BLUE)]
    assert all(len(rows) for rows in spans), [len(rows) for rows in spans]
    for upper, lower in zip(spans, spans[1:], strict=False):
        assert upper.max() < lower.min(), (upper.max(), lower.min())
    assert spans[-1].max() < card.height * 0.7  # the images sit above the curves and metrics


def test_metric_lines_carry_the_95_percent_interval_and_n():
    lines = metric_lines({"csim_dlib": 0.5, "csim_dlib_se": 0.05, "csim_dlib_n": 4.0,
                          "heldout_photos": 1.0, "unavailable": {}, "nan": float("nan")})
    assert lines == ["csim_dlib = 0.500 +- 0.098 (95 %, n = 4)", "heldout_photos = 1.000"]


def test_without_validation_the_card_still_draws():
    empty = pd.DataFrame(columns=["step", "exported", "export_reason"])
    card = concept_card("bob", [_solid(RED)], [_solid(BLUE)], {}, empty, {})
    assert card.height > 700


def test_a_concept_without_a_validation_history_file_still_gets_its_card():
    """A concept trained before validation existed: the optional history loads as a frame with no
    columns (a full run's evaluate failed on the missing file, then on the missing 'step')."""
    card = concept_card("bob", [_solid(RED)], [_solid(BLUE)], {}, pd.DataFrame(), {})
    assert card.height > 700 and _share(card, RED) > 0
