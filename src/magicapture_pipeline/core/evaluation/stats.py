"""How sure a reported mean is: n and the standard error of the mean (issue 18 §4).

Every mean the protocol reports (CSIM, held-out CSIM, style similarity, aesthetic score) is written
with ``<name>_n`` (how many values it averages) and ``<name>_se`` (the standard error of the mean,
sample standard deviation with ddof=1 over sqrt(n)); ``_se`` is absent below two values, where it
does not exist, never a fake 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import comb

import numpy as np


def mean_with_error(name: str, values: Iterable[float | None]) -> dict[str, float]:
    """``{name: mean, name_n: n, name_se: se}`` over the values that exist ({} with none)."""
    kept = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return {}
    out = {name: float(kept.mean()), f"{name}_n": float(kept.size)}
    if kept.size >= 2:
        out[f"{name}_se"] = float(kept.std(ddof=1) / np.sqrt(kept.size))
    return out


def expected_nearest(cosines: Iterable[float], size: int) -> float:
    """The expected nearest (highest) cosine over a random ``size``-element subset of ``cosines``.

    Exact, by order statistics: with the values sorted high to low, the i-th (0-based) is the
    subset's maximum with probability C(k-1-i, size-1) / C(k, size). With ``size`` equal to the
    number of values this is the plain maximum.
    """
    values = np.sort(np.asarray(list(cosines), dtype=np.float64))[::-1]
    k = values.size
    if k == 0:
        raise ValueError("expected_nearest needs at least one cosine")
    size = max(1, min(int(size), k))
    weights = np.array([comb(k - 1 - i, size - 1) for i in range(k)], dtype=np.float64)
    return float(values @ (weights / comb(k, size)))
