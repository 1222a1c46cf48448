"""Streaming moments (count, mean, central moments 2–4, min, max) with an exact
parallel merge (Chan et al. for M2, Pébay 2008 for M3 and M4).

Everything works column-wise on numpy arrays so a batch of predictions updates all
columns in a handful of vectorized operations; :class:`Moments` is the scalar value
object that is serialized. M3 and M4 are kept because the variance test needs the
reference kurtosis to be calibrated on non-normal features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edgefleet.agent.drift.errors import DriftDataError


class MomentArrays(NamedTuple):
    """Per-column moments; every field is a float64 array of the same shape."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    m4: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, columns: int) -> MomentArrays:
        z = np.zeros(columns)
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy(),
                   np.full(columns, np.inf), np.full(columns, -np.inf))


def batch_moments(x: np.ndarray, valid: np.ndarray) -> MomentArrays:
    """Moments of each column of ``x`` ([rows, columns]) over the entries where
    ``valid`` is true (non-finite entries are excluded by the caller's mask)."""
    count = valid.sum(axis=0).astype(np.float64)
    safe = np.maximum(count, 1.0)
    xs = np.where(valid, x, 0.0)
    mean = xs.sum(axis=0) / safe
    d = np.where(valid, x - mean, 0.0)
    d2 = d * d
    m2 = d2.sum(axis=0)
    m3 = (d2 * d).sum(axis=0)
    m4 = (d2 * d2).sum(axis=0)
    lo = np.where(valid, x, np.inf).min(axis=0, initial=np.inf)
    hi = np.where(valid, x, -np.inf).max(axis=0, initial=-np.inf)
    return MomentArrays(count, mean, m2, m3, m4, lo, hi)


def merge_arrays(a: MomentArrays, b: MomentArrays) -> MomentArrays:
    """Exact parallel merge of two moment sets (column-wise)."""
    na, nb = a.n, b.n
    n = na + nb
    safe = np.maximum(n, 1.0)
    delta = b.mean - a.mean
    d2 = delta * delta
    mean = a.mean + delta * nb / safe
    m2 = a.m2 + b.m2 + d2 * na * nb / safe
    m3 = (a.m3 + b.m3 + d2 * delta * na * nb * (na - nb) / (safe * safe)
          + 3.0 * delta * (na * b.m2 - nb * a.m2) / safe)
    m4 = (a.m4 + b.m4
          + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (safe * safe * safe)
          + 6.0 * d2 * (na * na * b.m2 + nb * nb * a.m2) / (safe * safe)
          + 4.0 * delta * (na * b.m3 - nb * a.m3) / safe)
    # An empty side contributes nothing: return the other side bit for bit.
    a_empty, b_empty = na == 0, nb == 0
    out = []
    for merged, av, bv in zip((mean, m2, m3, m4), a[1:5], b[1:5], strict=True):
        out.append(np.where(a_empty, bv, np.where(b_empty, av, merged)))
    return MomentArrays(n, out[0], out[1], out[2], out[3],
                        np.minimum(a.min, b.min), np.maximum(a.max, b.max))


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DriftDataError(f"moments: {what} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise DriftDataError(f"moments: {what} must be finite")
    return out


@dataclass(frozen=True)
class Moments:
    """Moments of one column. ``min``/``max`` are ``inf``/``-inf`` when ``n == 0``."""

    n: int
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @property
    def variance(self) -> float:
        """Unbiased sample variance (0 for fewer than two values)."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def kurtosis(self) -> float:
        """Population kurtosis m4·n/m2² (3 for a normal); 3 when undefined."""
        return self.n * self.m4 / (self.m2 * self.m2) if self.n > 1 and self.m2 > 0 else 3.0

    @classmethod
    def from_arrays(cls, arrays: MomentArrays, column: int) -> Moments:
        return cls(int(arrays.n[column]), *(float(v[column]) for v in arrays[1:]))

    @classmethod
    def to_arrays(cls, moments: list[Moments]) -> MomentArrays:
        return MomentArrays(*(np.array(col, dtype=np.float64)
                              for col in zip(*(m.as_tuple() for m in moments), strict=True)))

    def as_tuple(self) -> tuple[float, ...]:
        return (float(self.n), self.mean, self.m2, self.m3, self.m4, self.min, self.max)

    def merge(self, other: Moments) -> Moments:
        return Moments.from_arrays(merge_arrays(Moments.to_arrays([self]),
                                                Moments.to_arrays([other])), 0)

    def to_list(self) -> list[float | int | None]:
        """JSON-safe ``[n, mean, m2, m3, m4, min, max]`` (min/max ``None`` when empty)."""
        if self.n == 0:
            return [0, 0.0, 0.0, 0.0, 0.0, None, None]
        return [self.n, self.mean, self.m2, self.m3, self.m4, self.min, self.max]

    @classmethod
    def from_list(cls, data: object, *, max_n: int) -> Moments:
        """Inverse of :meth:`to_list`, validating every field.

        Raises:
            DriftDataError: wrong length or types, non-finite values, negative n or
                even moments, min > max, or n above ``max_n``.
        """
        if not isinstance(data, list) or len(data) != 7:
            raise DriftDataError("moments: expected a list of 7 values")
        n = data[0]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= max_n:
            raise DriftDataError(f"moments: n must be an integer in [0, {max_n}]")
        if n == 0:
            if data[1:] != [0.0, 0.0, 0.0, 0.0, None, None]:
                raise DriftDataError("moments: an empty column must be [0, 0, 0, 0, 0, null, null]")
            return cls(0)
        mean, m2, m3, m4, lo, hi = (_finite(v, "value") for v in data[1:])
        if m2 < 0 or m4 < 0 or lo > hi:
            raise DriftDataError("moments: m2/m4 must be non-negative and min <= max")
        return cls(n, mean, m2, m3, m4, lo, hi)
