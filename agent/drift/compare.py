"""Compare one window (or merged windows) with the reference: per-column statistics,
their sample-size-aware critical values and the window's status.

Four tests per column: PSI over the fixed bins, KS from the KLL sketches, and two
moment tests, a mean shift ``z = Δmean / sqrt(σ₀²(1/n + 1/m))`` and a variance ratio
``z = ln(s²/σ₀²) / sqrt((κ₀ - 1)(1/n + 1/m))`` (delta method with the reference
kurtosis κ₀, so heavy-tailed features are not over-alarmed). The moment tests are what
catch a 15% scale change within a couple of thousand predictions; PSI and KS catch
shape changes that keep mean and variance. Jensen–Shannon is reported, not tested
(it carries the same information as PSI on the same bins).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from edgefleet.agent.drift import kll
from edgefleet.agent.drift.column import ColumnStats
from edgefleet.agent.drift.errors import DriftDataError
from edgefleet.agent.drift.moments import Moments
from edgefleet.agent.drift.profile import ColumnProfile, ReferenceProfile
from edgefleet.agent.drift.stats import (
    js_divergence,
    ks_critical,
    ks_sketches,
    normal_quantile,
    psi,
    psi_critical,
)
from edgefleet.agent.drift.summary import WindowSummary
from edgefleet.agent.drift.thresholds import DriftThresholds

TESTS_PER_COLUMN = 4
_MIN_EXCESS_KURTOSIS = 0.2  # κ-1 floor: two-point distributions have κ = 1


class WindowStatus(enum.Enum):
    INSUFFICIENT = "insufficient"  # no column has min_n finite values
    OVER = "over"                  # some column exceeds a drift threshold
    CLEAR = "clear"                # every tested column is below the lower thresholds
    BETWEEN = "between"            # neither: keeps the alarm as it is, breaks streaks


@dataclass(frozen=True)
class ColumnDrift:
    """Statistics of one column against the reference; ``over``/``clear`` are False
    for a column that was not tested (``tested`` False: fewer than ``min_n`` values)."""

    name: str
    n: int
    tested: bool
    psi: float
    js: float
    ks: float
    z_mean: float
    z_var: float
    psi_critical: float
    ks_critical: float
    z_critical: float
    over: bool
    clear: bool


@dataclass(frozen=True)
class WindowReport:
    status: WindowStatus
    columns: tuple[ColumnDrift, ...]

    @property
    def drifted(self) -> tuple[str, ...]:
        """Names of the columns over their thresholds."""
        return tuple(c.name for c in self.columns if c.over)


def _z_tests(ref: Moments, cur: Moments) -> tuple[float, float, float, float]:
    """(z_mean, z_var, |mean shift| in reference sds, |ln variance ratio|)."""
    if cur.n < 2 or ref.n < 2:
        return 0.0, 0.0, 0.0, 0.0
    scale = 1.0 / cur.n + 1.0 / ref.n
    v0, v = ref.variance, cur.variance
    shift = cur.mean - ref.mean
    if v0 > 0:
        z_mean, effect = shift / math.sqrt(v0 * scale), abs(shift) / math.sqrt(v0)
    else:
        z_mean = effect = 0.0 if shift == 0 else math.copysign(math.inf, shift)
    tiny = 1e-12 * (1.0 + v0)
    ratio = math.log((v + tiny) / (v0 + tiny))
    z_var = ratio / math.sqrt(max(ref.kurtosis - 1.0, _MIN_EXCESS_KURTOSIS) * scale)
    return z_mean, z_var, effect, abs(ratio)


def compare_column(ref: ColumnProfile, cur: ColumnStats, thresholds: DriftThresholds,
                   columns: int) -> ColumnDrift:
    """Test one column; ``columns`` is how many columns share the window's alpha."""
    if cur.counts.size != ref.bins:
        raise DriftDataError(f"{cur.name}: {cur.counts.size} bins, reference has {ref.bins}")
    t = thresholds
    n, m = cur.n, ref.stats.n
    alpha = t.alpha / (TESTS_PER_COLUMN * columns)
    alpha_clear = t.alpha_clear / (TESTS_PER_COLUMN * columns)
    p, j = psi(ref.stats.counts, cur.counts), js_divergence(ref.stats.counts, cur.counts)
    k = ks_sketches(ref.stats.sketch, cur.sketch)
    z_mean, z_var, mean_effect, var_effect = _z_tests(ref.stats.moments, cur.moments)
    error = kll.rank_error(ref.stats.sketch) + kll.rank_error(cur.sketch)
    p_crit, k_crit = psi_critical(n, m, ref.bins, alpha), ks_critical(n, m, alpha, error)
    z_crit = normal_quantile(1.0 - alpha / 2.0)
    tested = n >= t.min_n and m >= 2
    over = tested and (
        p > max(t.psi_min, p_crit) or k > max(t.ks_min, k_crit)
        or (abs(z_mean) > z_crit and mean_effect >= t.mean_shift_min)
        or (abs(z_var) > z_crit and var_effect >= t.log_var_min))
    z_clear = normal_quantile(1.0 - alpha_clear / 2.0)
    clear = tested and not (
        p > max(t.psi_min / 2, psi_critical(n, m, ref.bins, alpha_clear))
        or k > max(t.ks_min / 2, ks_critical(n, m, alpha_clear, error))
        or (abs(z_mean) > z_clear and mean_effect >= t.mean_shift_min / 2)
        or (abs(z_var) > z_clear and var_effect >= t.log_var_min / 2))
    return ColumnDrift(cur.name, n, tested, p, j, k, z_mean, z_var, p_crit, k_crit, z_crit,
                       over, clear)


def compare(reference: ReferenceProfile, summary: WindowSummary,
            thresholds: DriftThresholds | None = None) -> WindowReport:
    """Test every column of ``summary`` against ``reference``.

    Raises:
        DriftDataError: the summary was built on a different reference.
    """
    t = thresholds or DriftThresholds()
    if summary.reference != reference.digest:
        raise DriftDataError("summary was computed against a different reference")
    refs = reference.columns
    if len(summary.columns) != len(refs):
        raise DriftDataError("summary and reference have different columns")
    cols = tuple(compare_column(r, c, t, len(refs))
                 for r, c in zip(refs, summary.columns, strict=True))
    tested = [c for c in cols if c.tested]
    if not tested:
        status = WindowStatus.INSUFFICIENT
    elif any(c.over for c in tested):
        status = WindowStatus.OVER
    elif all(c.clear for c in tested):
        status = WindowStatus.CLEAR
    else:
        status = WindowStatus.BETWEEN
    return WindowReport(status, cols)
