"""Drift statistics and their sample-size-aware critical values (pure functions).

* PSI (population stability index) over fixed bins, with additive smoothing ``eps`` so
  empty bins stay finite. For small differences PSI ≈ Σ (q-p)²/p, and the two-sample
  chi-square argument gives PSI · nm/(n+m) ~ χ²(B-1) when nothing drifted, so the
  critical value is ``χ²_{B-1}(1-α) · (1/n + 1/m)``: a window of 50 predictions needs a
  far larger PSI to alarm than one of 50,000.
* Jensen–Shannon divergence in bits (base 2), bounded in [0, 1] and symmetric; for small
  differences JS ≈ PSI / (8 ln 2), so it is reported beside PSI rather than tested.
* KS, the largest gap between two CDFs: exactly from raw samples (tests, reference) or
  from two KLL sketches. Critical value ``c(α)·sqrt((n+m)/(n·m))`` with
  ``c(α) = sqrt(-ln(α/2)/2)`` (asymptotic two-sample), plus each sketch's rank error
  (0 when a sketch still holds every value).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from edgefleet.agent.drift import kll
from edgefleet.agent.drift.errors import DriftDataError

PSI_EPS = 1e-4
_NORMAL = NormalDist()


def _proportions(counts: object, what: str) -> np.ndarray:
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DriftDataError(f"{what}: expected a non-empty 1-D array of non-negative counts")
    return arr


def _pair(ref_counts: object, cur_counts: object) -> tuple[np.ndarray, np.ndarray] | None:
    ref = _proportions(ref_counts, "reference counts")
    cur = _proportions(cur_counts, "current counts")
    if ref.size != cur.size:
        raise DriftDataError(f"bin counts differ in length: {ref.size} vs {cur.size}")
    rs, cs = ref.sum(), cur.sum()
    if rs == 0 or cs == 0:
        return None
    return ref / rs, cur / cs


def psi(ref_counts: object, cur_counts: object, eps: float = PSI_EPS) -> float:
    """Population stability index Σ (q-p)·ln(q/p) over smoothed proportions
    ``(p + eps)/(1 + B·eps)``. 0 when either side is empty (no evidence).

    Raises:
        DriftDataError: negative, non-finite or mismatched counts.
    """
    pair = _pair(ref_counts, cur_counts)
    if pair is None:
        return 0.0
    p, q = pair
    scale = 1.0 + p.size * eps
    p, q = (p + eps) / scale, (q + eps) / scale
    return float(max(0.0, np.sum((q - p) * np.log(q / p))))


def _kl2(a: np.ndarray, m: np.ndarray) -> float:
    mask = a > 0
    return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))


def js_divergence(ref_counts: object, cur_counts: object) -> float:
    """Jensen–Shannon divergence in bits, in [0, 1]; 0 when either side is empty.

    Raises:
        DriftDataError: negative, non-finite or mismatched counts.
    """
    pair = _pair(ref_counts, cur_counts)
    if pair is None:
        return 0.0
    p, q = pair
    m = (p + q) / 2.0
    return min(1.0, max(0.0, 0.5 * (_kl2(p, m) + _kl2(q, m))))


def _ks_weighted(xa: np.ndarray, wa: np.ndarray, xb: np.ndarray, wb: np.ndarray) -> float:
    if xa.size == 0 or xb.size == 0:
        return 0.0
    ca, cb = np.cumsum(wa) / wa.sum(), np.cumsum(wb) / wb.sum()
    points = np.concatenate((xa, xb))  # duplicates are harmless for a max
    fa = np.concatenate(([0.0], ca))[np.searchsorted(xa, points, side="right")]
    fb = np.concatenate(([0.0], cb))[np.searchsorted(xb, points, side="right")]
    return float(np.max(np.abs(fa - fb)))


def ks_exact(a: object, b: object) -> float:
    """Two-sample KS statistic of raw samples (non-finite values dropped)."""
    xa, xb = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    xa, xb = np.sort(xa[np.isfinite(xa)]), np.sort(xb[np.isfinite(xb)])
    return _ks_weighted(xa, np.ones(xa.size), xb, np.ones(xb.size))


def ks_sketches(a: kll.Sketch, b: kll.Sketch) -> float:
    """KS statistic between the distributions two KLL sketches represent: the exact
    maximum CDF gap of their weighted retained items. 0 if either is empty."""
    return _ks_weighted(*kll.items_and_weights(a), *kll.items_and_weights(b))


def normal_quantile(p: float) -> float:
    """Standard normal quantile."""
    return _NORMAL.inv_cdf(p)


def chi2_quantile(p: float, dof: int) -> float:
    """χ² quantile: exact for 1 and 2 degrees of freedom, else the Wilson–Hilferty cube
    approximation (within a few percent in the tails used here; numpy has no χ² inverse
    and devices carry no scipy)."""
    if dof < 1:
        return 0.0
    if dof == 1:  # exact: the square of a standard normal
        return normal_quantile((1.0 + p) / 2.0) ** 2
    if dof == 2:  # exact: an exponential with mean 2
        return -2.0 * math.log1p(-p)
    z = normal_quantile(p)
    h = 2.0 / (9.0 * dof)
    return dof * max(0.0, 1.0 - h + z * math.sqrt(h)) ** 3


def psi_critical(n: int, m: int, bins: int, alpha: float) -> float:
    """PSI that a window of ``n`` values exceeds with probability about ``alpha`` when
    it comes from the same distribution as a reference of ``m`` values."""
    if n <= 0 or m <= 0:
        return math.inf
    return chi2_quantile(1.0 - alpha, bins - 1) * (1.0 / n + 1.0 / m)


def ks_critical(n: int, m: int, alpha: float, sketch_error: float = 0.0) -> float:
    """KS value exceeded with probability about ``alpha`` under no drift, for samples
    of ``n`` and ``m`` values, widened by ``sketch_error`` (sum of the two sketches'
    rank errors)."""
    if n <= 0 or m <= 0:
        return math.inf
    c = math.sqrt(-math.log(alpha / 2.0) / 2.0)
    return c * math.sqrt((n + m) / (n * m)) + sketch_error
