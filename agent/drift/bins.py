"""Fixed bin edges (from reference quantiles) and vectorized counting over them.

A column with interior edges ``e_1 < … < e_{B-1}`` has ``B`` bins: ``(-inf, e_1)``,
``[e_1, e_2)``, …, ``[e_{B-1}, +inf)``, so values outside the reference range still land
in the open-ended first or last bin. Non-finite values are counted apart, never binned.
"""

from __future__ import annotations

import math

import numpy as np

from edgefleet.agent.drift.errors import DriftDataError

DEFAULT_BINS = 10
MAX_BINS = 64


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Interior edges at the reference's 1/bins … (bins-1)/bins quantiles, deduplicated
    (a feature with heavy ties gets fewer bins; a constant feature gets two)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(0)
    qs = np.quantile(finite, np.arange(1, bins) / bins, method="inverted_cdf")
    edges = np.unique(qs.astype(np.float64))
    return edges


def bin_index(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bin of every value of ``x`` (any shape) for one column's ``edges``."""
    return np.searchsorted(edges, x, side="right")


def validate_edges(edges: object, what: str) -> np.ndarray:
    """Edges from the wire: a strictly increasing list of finite numbers.

    Raises:
        DriftDataError: anything else.
    """
    if not isinstance(edges, list) or len(edges) > MAX_BINS - 1:
        raise DriftDataError(f"{what}: edges must be a list of at most {MAX_BINS - 1} numbers")
    for e in edges:
        if isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e):
            raise DriftDataError(f"{what}: edges must be finite numbers")
    out = np.array(edges, dtype=np.float64)
    if out.size > 1 and not np.all(np.diff(out) > 0):
        raise DriftDataError(f"{what}: edges must be strictly increasing")
    return out


def validate_counts(counts: object, bins: int, what: str, max_total: int) -> np.ndarray:
    """Counts from the wire: exactly ``bins`` non-negative integers summing to at most
    ``max_total``.

    Raises:
        DriftDataError: anything else.
    """
    if not isinstance(counts, list) or len(counts) != bins:
        raise DriftDataError(f"{what}: expected {bins} bin counts")
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= max_total:
            raise DriftDataError(f"{what}: bin counts must be integers in [0, {max_total}]")
    if sum(counts) > max_total:
        raise DriftDataError(f"{what}: bin counts add up to more than {max_total}")
    return np.array(counts, dtype=np.int64)


def validate_count(value: object, what: str, max_total: int) -> int:
    """A single non-negative integer count.

    Raises:
        DriftDataError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= max_total:
        raise DriftDataError(f"{what} must be an integer in [0, {max_total}]")
    return value
