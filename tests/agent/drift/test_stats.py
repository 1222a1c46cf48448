"""PSI, Jensen–Shannon, KS and their critical values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from edgefleet.agent.drift import (
    DriftDataError,
    js_divergence,
    kll,
    ks_critical,
    ks_exact,
    ks_sketches,
    psi,
    psi_critical,
)
from edgefleet.agent.drift.stats import chi2_quantile

counts = st.lists(st.integers(0, 10**6), min_size=1, max_size=20)


@settings(max_examples=200)
@given(counts, st.integers(1, 1000))
def test_psi_of_identical_distributions_is_zero(c: list[int], factor: int) -> None:
    assert psi(c, c) == 0.0
    assert psi(c, [v * factor for v in c]) == 0.0
    assert js_divergence(c, c) == 0.0


@settings(max_examples=200)
@given(st.data())
def test_js_is_bounded_and_symmetric_psi_non_negative(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 20))
    a = data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
    b = data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
    j = js_divergence(a, b)
    assert 0.0 <= j <= 1.0
    assert j == js_divergence(b, a)
    assert psi(a, b) >= 0.0


def test_disjoint_distributions() -> None:
    assert js_divergence([1, 0], [0, 1]) == 1.0
    assert psi([1, 0], [0, 1]) > 5.0
    assert psi([0, 0], [1, 1]) == 0.0  # no evidence from an empty side


@pytest.mark.parametrize(("a", "b"), [([1, 2], [1]), ([-1, 2], [1, 2]), ([], []),
                                      ([float("nan"), 1], [1, 1])])
def test_bad_counts(a: list[float], b: list[float]) -> None:
    with pytest.raises(DriftDataError):
        psi(a, b)
    with pytest.raises(DriftDataError):
        js_divergence(a, b)


def test_ks_exact_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for n, m in [(10, 17), (500, 300), (2000, 2000)]:
        a, b = rng.normal(size=n), rng.normal(0.1, 1.2, size=m).round(1)
        assert ks_exact(a, b) == pytest.approx(sps.ks_2samp(a, b).statistic, abs=1e-12)


def test_ks_of_small_sketches_is_exact() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=150).astype(np.float32), rng.normal(size=120).astype(np.float32)
    sa, sb = kll.new_sketch(), kll.new_sketch()
    sa.update(a)
    sb.update(b)
    assert ks_sketches(sa, sb) == pytest.approx(ks_exact(a, b), abs=1e-12)
    assert ks_sketches(sa, kll.new_sketch()) == 0.0


@pytest.mark.parametrize("dof", [1, 4, 9, 15, 63])
@pytest.mark.parametrize("p", [0.95, 0.999, 1 - 1e-6])
def test_chi2_quantile_close_to_scipy(dof: int, p: float) -> None:
    assert chi2_quantile(p, dof) == pytest.approx(sps.chi2.ppf(p, dof), rel=0.08)


def test_critical_values_shrink_with_sample_size() -> None:
    small, large = psi_critical(100, 10**5, 10, 1e-3), psi_critical(10**4, 10**5, 10, 1e-3)
    assert small > 10 * large
    assert ks_critical(100, 10**5, 1e-3) > ks_critical(10**4, 10**5, 1e-3)
    assert ks_critical(100, 100, 0.05) == pytest.approx(1.358 * math.sqrt(2 / 100), rel=1e-3)
    assert psi_critical(0, 10, 10, 0.01) == math.inf


def test_psi_critical_is_calibrated() -> None:
    """Under no drift about alpha of windows exceed the PSI critical value."""
    rng = np.random.default_rng(5)
    p = np.full(10, 0.1)
    ref = rng.multinomial(100_000, p)
    n, alpha = 1000, 0.05
    crit = psi_critical(n, 100_000, 10, alpha)
    exceed = np.mean([psi(ref, rng.multinomial(n, p)) > crit for _ in range(4000)])
    assert 0.03 < exceed < 0.07
