"""Significance tests for A/B comparisons of two model versions (arm A vs arm B).

Pure math on counts and samples, no I/O and no scipy: the normal tail comes from
``math.erfc``, Student's t from the regularized incomplete beta function and the
chi-square tail from the regularized upper incomplete gamma function, both evaluated with
the continued fractions of Numerical Recipes (modified Lentz), accurate to about 1e-12.

* :func:`two_proportions`: success rates (e.g. "prediction accepted"), pooled z-test.
* :func:`welch_t`: means of unequal-variance samples (e.g. latency), Welch's t-test.
* :func:`chi_square_counts`: two histograms over the same bins (e.g. predicted classes).
* :func:`compare`: turns a :class:`TestResult` into a :class:`Verdict` an operator reads.

All tests are two-sided. Effects are "B minus A" in the metric's own unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

_EPS = 1e-15
_FPMIN = 1e-300
_MAX_ITER = 100_000
# Past this many degrees of freedom Student's t is the normal distribution to ~1e-7.
_NORMAL_DF = 1e7


@dataclass(frozen=True)
class TestResult:
    """One test's outcome.

    ``effect`` is B minus A in the natural unit (difference of proportions, difference of
    means) or, for the chi-square test, Cramér's V (0..1, no direction: ``directional`` is
    then False).
    """

    __test__ = False  # not a pytest test class despite the name

    statistic: float
    p_value: float
    df: float | None
    effect: float
    n_a: int
    n_b: int
    directional: bool = True


@dataclass(frozen=True)
class Verdict:
    """What an A/B comparison says: which arm wins (if any) and why."""

    winner: Literal["a", "b"] | None
    confidence: float  # 1 - p
    significant: bool
    reason: str


def normal_sf2(z: float) -> float:
    """Two-sided tail probability P(|Z| >= |z|) of the standard normal distribution."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
            c = 1.0 + aa / c
            c = c if abs(c) > _FPMIN else _FPMIN
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` degrees."""
    if math.isnan(t) or math.isnan(df) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    if df > _NORMAL_DF:
        return normal_sf2(t)
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def gammaincc(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) for a > 0, x >= 0."""
    if x <= 0.0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:  # series for P(a, x), then Q = 1 - P
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                return 1.0 - total * math.exp(log_front)
        raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")
    b = x + 1.0 - a  # continued fraction for Q(a, x)
    c = 1.0 / _FPMIN
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = b + an / c
        c = c if abs(c) > _FPMIN else _FPMIN
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return math.exp(log_front) * h
    raise ArithmeticError(f"incomplete gamma fraction did not converge for a={a}, x={x}")


def chi2_sf(x: float, df: float) -> float:
    """Survival function P(X >= x) of the chi-square distribution with ``df`` degrees."""
    if math.isnan(x) or math.isnan(df) or df <= 0:
        return math.nan
    if math.isinf(x):
        return 0.0
    return gammaincc(df / 2.0, x / 2.0)


def two_proportions(successes_a: int, n_a: int, successes_b: int, n_b: int) -> TestResult:
    """Two-sided z-test that two success rates are equal, with the pooled standard error.

    ``effect`` is ``successes_b / n_b - successes_a / n_a``. When both arms are all
    successes or all failures there is no variance and no evidence: z = 0, p = 1.

    Raises:
        ValueError: a count is negative, successes exceed trials, or an arm is empty.
    """
    for name, s, n in (("a", successes_a, n_a), ("b", successes_b, n_b)):
        if n < 1 or not 0 <= s <= n:
            raise ValueError(f"arm {name}: need 0 <= successes ({s}) <= trials ({n}), trials >= 1")
    p_a, p_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    if se == 0.0:
        return TestResult(0.0, 1.0, None, p_b - p_a, n_a, n_b)
    z = (p_b - p_a) / se
    return TestResult(z, normal_sf2(z), None, p_b - p_a, n_a, n_b)


def _mean_var(xs: Sequence[float], arm: str) -> tuple[float, float]:
    if len(xs) < 2:
        raise ValueError(f"arm {arm}: Welch's t-test needs at least 2 values, got {len(xs)}")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"arm {arm}: values must be finite numbers")
    mean = math.fsum(xs) / len(xs)
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, var


def welch_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's two-sided t-test that two means are equal (variances may differ).

    Degrees of freedom come from the Welch-Satterthwaite equation; ``effect`` is
    ``mean(b) - mean(a)``. Two constant samples give p = 1 when the constants are equal
    and p = 0 when they differ.

    Raises:
        ValueError: an arm has fewer than 2 values or a non-finite value.
    """
    mean_a, var_a = _mean_var(a, "a")
    mean_b, var_b = _mean_var(b, "b")
    diff = mean_b - mean_a
    va, vb = var_a / len(a), var_b / len(b)
    se2 = va + vb
    if se2 == 0.0:
        statistic = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
        return TestResult(statistic, p, float(len(a) + len(b) - 2), diff, len(a), len(b))
    # Welch-Satterthwaite, written with the shares of se2 so tiny variances cannot underflow.
    ra, rb = va / se2, vb / se2
    df = 1.0 / (ra * ra / (len(a) - 1) + rb * rb / (len(b) - 1))
    t = diff / math.sqrt(se2)
    return TestResult(t, student_t_sf2(t, df), df, diff, len(a), len(b))


def chi_square_counts(counts_a: Sequence[float], counts_b: Sequence[float]) -> TestResult:
    """Chi-square test that two histograms over the same bins come from one distribution.

    Bins empty in both histograms are dropped; ``df`` is the number of remaining bins
    minus one and ``effect`` is Cramér's V (``sqrt(chi2 / total)`` for two rows). All
    mass in a single bin on both sides means identical histograms: chi2 = 0, p = 1.

    Raises:
        ValueError: the histograms differ in length, hold a negative or non-finite count,
            or one of them is empty.
    """
    if len(counts_a) != len(counts_b):
        raise ValueError(f"histograms differ in bins: {len(counts_a)} vs {len(counts_b)}")
    if not all(math.isfinite(c) and c >= 0 for c in (*counts_a, *counts_b)):
        raise ValueError("histogram counts must be finite and non-negative")
    bins = [(x, y) for x, y in zip(counts_a, counts_b, strict=True) if x > 0 or y > 0]
    total_a, total_b = math.fsum(x for x, _ in bins), math.fsum(y for _, y in bins)
    if total_a <= 0 or total_b <= 0:
        raise ValueError(f"both histograms need counts, got totals {total_a} and {total_b}")
    n_a, n_b = round(total_a), round(total_b)
    if len(bins) < 2:
        return TestResult(0.0, 1.0, 0.0, 0.0, n_a, n_b, directional=False)
    total = total_a + total_b
    chi2 = 0.0
    for x, y in bins:
        column = x + y
        for observed, row in ((x, total_a), (y, total_b)):
            expected = row * column / total
            chi2 += (observed - expected) ** 2 / expected
    df = float(len(bins) - 1)
    v = math.sqrt(chi2 / total)
    return TestResult(chi2, chi2_sf(chi2, df), df, v, n_a, n_b, directional=False)


def compare(
    metric: str,
    result: TestResult,
    *,
    alpha: float = 0.05,
    higher_is_better: bool,
    min_samples: int,
) -> Verdict:
    """Read a test result as a verdict on ``metric``.

    There is a winner only when both arms have at least ``min_samples`` samples and
    ``p < alpha``; it is the arm whose ``metric`` is better given ``higher_is_better``.
    Too few samples is never significant. A non-directional result (chi-square) can be
    significant but names no winner: a different distribution is not better or worse.
    """
    p = result.p_value
    confidence = 1.0 - p if math.isfinite(p) else 0.0
    p_text = f"p={p:.3g}" if math.isfinite(p) else f"p={p}"
    samples = f"n={result.n_a:,} vs {result.n_b:,}"
    if result.n_a < min_samples or result.n_b < min_samples:
        return Verdict(
            None,
            confidence,
            False,
            f"{metric}: too few samples to judge ({samples}, need {min_samples:,} per arm)",
        )
    significant = math.isfinite(p) and p < alpha
    if not significant:
        return Verdict(
            None,
            confidence,
            False,
            f"{metric}: no significant difference ({p_text}, alpha {alpha:g}, {samples})",
        )
    if not result.directional:
        return Verdict(
            None,
            confidence,
            True,
            f"{metric}: the arms differ (effect {result.effect:.3g}, {p_text} < {alpha:g}, "
            f"{samples}) but the test has no direction, so neither arm wins",
        )
    if result.effect == 0:
        return Verdict(None, confidence, True, f"{metric}: significant but zero effect")
    b_higher = result.effect > 0
    winner: Literal["a", "b"] = "b" if b_higher == higher_is_better else "a"
    direction = "higher" if b_higher else "lower"
    return Verdict(
        winner,
        confidence,
        True,
        f"{metric}: {winner.upper()} wins, B is {direction} by {abs(result.effect):.3g} "
        f"({p_text} < {alpha:g}, {samples})",
    )
