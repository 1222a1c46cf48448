"""A/B statistics against closed forms, textbook tables and hand-computed examples."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.fleet_server.rollouts import abstats
from edgefleet.fleet_server.rollouts.abstats import (
    chi2_sf,
    chi_square_counts,
    compare,
    normal_sf2,
    student_t_sf2,
    two_proportions,
    welch_t,
)

FAST = settings(max_examples=100, deadline=None)
TABLE = 1e-4  # printed tables carry 4-6 significant digits

# --- distributions ----------------------------------------------------------------------


@pytest.mark.parametrize(("z", "p"), [(1.959964, 0.05), (2.575829, 0.01), (1.644854, 0.10)])
def test_normal_table(z: float, p: float) -> None:
    assert normal_sf2(z) == pytest.approx(p, abs=1e-6)
    assert normal_sf2(-z) == normal_sf2(z)


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [  # two-sided critical values of Student's t (any statistics textbook table)
        (12.706, 1, 0.05),
        (4.303, 2, 0.05),
        (2.571, 5, 0.05),
        (2.228, 10, 0.05),
        (2.042, 30, 0.05),
        (1.980, 120, 0.05),
        (63.657, 1, 0.01),
        (3.169, 10, 0.01),
        (2.750, 30, 0.01),
        (1.812, 10, 0.10),
    ],
)
def test_student_t_table(t: float, df: float, p: float) -> None:
    assert student_t_sf2(t, df) == pytest.approx(p, abs=TABLE)
    assert student_t_sf2(-t, df) == student_t_sf2(t, df)


@pytest.mark.parametrize("t", [0.0, 0.1, 0.7, 1.0, 2.5, 10.0, 300.0])
def test_student_t_closed_forms(t: float) -> None:
    # df = 1 is the Cauchy distribution, df = 2 has an algebraic CDF.
    assert student_t_sf2(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
    assert student_t_sf2(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)


def test_student_t_limits() -> None:
    assert student_t_sf2(1.959964, 1e9) == pytest.approx(0.05, abs=1e-6)  # normal limit
    assert student_t_sf2(1.959964, 1e5) == pytest.approx(0.05, abs=1e-4)
    assert student_t_sf2(math.inf, 5) == 0.0
    assert math.isnan(student_t_sf2(1.0, 0))


@pytest.mark.parametrize(
    ("x", "df", "p"),
    [  # upper critical values of the chi-square distribution
        (3.841, 1, 0.05),
        (5.991, 2, 0.05),
        (7.815, 3, 0.05),
        (11.070, 5, 0.05),
        (18.307, 10, 0.05),
        (6.635, 1, 0.01),
        (23.209, 10, 0.01),
        (43.773, 30, 0.05),
        (124.342, 100, 0.05),
    ],
)
def test_chi2_table(x: float, df: float, p: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(p, abs=TABLE)


@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 3.0, 9.5, 40.0])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_chi2_even_df_closed_form(x: float, k: int) -> None:
    # With df = 2k the survival function is exp(-x/2) * sum_{j<k} (x/2)^j / j!.
    half = x / 2
    expected = math.exp(-half) * sum(half**j / math.factorial(j) for j in range(k))
    assert chi2_sf(x, 2 * k) == pytest.approx(expected, rel=1e-10, abs=1e-15)
    # df = 1: P(Z^2 >= x) = P(|Z| >= sqrt(x)).
    assert chi2_sf(x, 1) == pytest.approx(normal_sf2(math.sqrt(x)), abs=1e-12)


@FAST
@given(st.floats(0.5, 500), st.floats(0.0, 50), st.floats(0.0, 50))
def test_distribution_tails_are_monotone_probabilities(df: float, x: float, y: float) -> None:
    lo, hi = sorted((x, y))
    for sf in (chi2_sf, student_t_sf2):
        assert 0.0 <= sf(hi, df) <= sf(lo, df) <= 1.0 + 1e-12


# --- two proportions --------------------------------------------------------------------


def test_two_proportions_hand_computed() -> None:
    # 45/100 vs 56/100: pooled p = 0.505, SE = sqrt(0.505 * 0.495 * (1/100 + 1/100))
    # = 0.0707053, z = 0.11 / SE = 1.5557, two-sided p = 0.1198.
    r = two_proportions(45, 100, 56, 100)
    assert r.statistic == pytest.approx(1.5557, abs=1e-4)
    assert r.p_value == pytest.approx(0.1198, abs=1e-4)
    assert r.effect == pytest.approx(0.11)
    assert (r.df, r.n_a, r.n_b, r.directional) == (None, 100, 100, True)


def test_two_proportions_significant_and_symmetric() -> None:
    # 120/1000 vs 160/1000: pooled 0.14, SE = sqrt(.14 * .86 * .002) = 0.0155177,
    # z = 0.04 / SE = 2.5777, p = 0.00995.
    r = two_proportions(120, 1000, 160, 1000)
    assert r.statistic == pytest.approx(2.5777, abs=1e-4)
    assert r.p_value == pytest.approx(0.00995, abs=1e-4)
    swapped = two_proportions(160, 1000, 120, 1000)
    assert swapped.statistic == pytest.approx(-r.statistic)
    assert swapped.p_value == pytest.approx(r.p_value)


def test_two_proportions_degenerate_and_errors() -> None:
    assert two_proportions(0, 50, 0, 80).p_value == 1.0
    assert two_proportions(50, 50, 80, 80).p_value == 1.0
    for args in [(5, 0, 1, 10), (11, 10, 1, 10), (-1, 10, 1, 10), (1, 10, 3, 2)]:
        with pytest.raises(ValueError, match="successes"):
            two_proportions(*args)


# --- Welch ------------------------------------------------------------------------------

# The Welch example of Wikipedia's "Welch's t-test" article (sample A1 vs A2):
# t = 2.46 (here B minus A), df = 24.99, two-sided p = 0.021.
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def test_welch_textbook_example() -> None:
    r = welch_t(A1, A2)
    assert r.statistic == pytest.approx(2.4554, abs=1e-4)
    assert r.df == pytest.approx(24.9885, abs=1e-4)
    assert r.p_value == pytest.approx(0.02138, abs=1e-4)
    assert r.effect == pytest.approx(sum(A2) / 15 - sum(A1) / 15)
    assert (r.n_a, r.n_b) == (15, 15)


def test_welch_hand_computed_unequal_sizes() -> None:
    # a: mean 2, var 1 (n=3); b: mean 5, var 2.5 (n=5). SE^2 = 1/3 + 0.5 = 0.8333,
    # t = 3 / sqrt(5/6) = 3.28634, df = (25/36) / ((1/3)^2/2 + (1/2)^2/4) = 100/17.
    r = welch_t([1.0, 2.0, 3.0], [3.0, 4.0, 5.0, 6.0, 7.0])
    assert r.statistic == pytest.approx(3 / math.sqrt(5 / 6))
    assert r.df == pytest.approx(100 / 17)
    assert r.p_value == pytest.approx(
        0.017178, abs=1e-5
    )  # scipy's ttest_ind(equal_var=False) gives this


def test_welch_degenerate_and_errors() -> None:
    assert welch_t([1.0, 1.0], [1.0, 1.0, 1.0]).p_value == 1.0
    r = welch_t([1.0, 1.0], [2.0, 2.0])
    assert (r.p_value, r.statistic) == (0.0, math.inf)
    with pytest.raises(ValueError, match="at least 2 values"):
        welch_t([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        welch_t([1.0, math.nan], [1.0, 2.0])


@FAST
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30),
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30),
)
def test_welch_antisymmetric(a: list[float], b: list[float]) -> None:
    ab, ba = welch_t(a, b), welch_t(b, a)
    assert 0.0 <= ab.p_value <= 1.0
    assert ab.p_value == pytest.approx(ba.p_value, abs=1e-12)
    assert ab.effect == pytest.approx(-ba.effect, abs=1e-9)


@FAST
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30))
def test_welch_same_sample_is_no_evidence(a: list[float]) -> None:
    r = welch_t(a, list(reversed(a)))
    assert r.p_value == pytest.approx(1.0, abs=1e-9)


# --- chi-square -------------------------------------------------------------------------


def test_chi_square_hand_computed() -> None:
    # Table [[10, 20, 30], [20, 20, 20]]: expected 15, 20, 25 per row, chi2 =
    # 2 * (25/15 + 0 + 25/25) = 5.3333, df = 2, p = exp(-5.3333/2) = 0.069483,
    # Cramér's V = sqrt(5.3333 / 120) = 0.21082.
    r = chi_square_counts([10, 20, 30], [20, 20, 20])
    assert r.statistic == pytest.approx(16 / 3)
    assert r.df == 2.0
    assert r.p_value == pytest.approx(math.exp(-8 / 3), abs=1e-10)
    assert r.effect == pytest.approx(0.21082, abs=1e-5)
    assert (r.n_a, r.n_b, r.directional) == (60, 60, False)


def test_chi_square_drops_empty_bins() -> None:
    full = chi_square_counts([10, 20, 30], [20, 20, 20])
    padded = chi_square_counts([0, 10, 0, 20, 30, 0], [0, 20, 0, 20, 20, 0])
    assert padded == full


def test_chi_square_2x2_matches_two_proportions() -> None:
    # For two bins the chi-square statistic is the square of the pooled z statistic.
    chi = chi_square_counts([45, 55], [56, 44])
    z = two_proportions(45, 100, 56, 100)
    assert chi.statistic == pytest.approx(z.statistic**2)
    assert chi.p_value == pytest.approx(z.p_value)


def test_chi_square_degenerate_and_errors() -> None:
    r = chi_square_counts([0, 7, 0], [0, 3, 0])
    assert (r.statistic, r.p_value) == (0.0, 1.0)
    with pytest.raises(ValueError, match="differ in bins"):
        chi_square_counts([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="both histograms need counts"):
        chi_square_counts([0, 0], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        chi_square_counts([1, -2], [1, 2])


@FAST
@given(
    st.lists(st.integers(0, 1000), min_size=2, max_size=12).filter(lambda c: sum(c) > 0),
    st.integers(1, 9),
)
def test_chi_square_proportional_histograms_agree(counts: list[int], k: int) -> None:
    r = chi_square_counts(counts, [c * k for c in counts])
    assert r.statistic == pytest.approx(0.0, abs=1e-9)
    assert r.p_value == pytest.approx(1.0, abs=1e-9)


# --- compare ----------------------------------------------------------------------------


def result(effect: float, p: float, n: int = 500, directional: bool = True) -> abstats.TestResult:
    return abstats.TestResult(2.0, p, None, effect, n, n, directional)


def test_compare_picks_the_better_arm() -> None:
    v = compare("accuracy", result(0.03, 0.001), higher_is_better=True, min_samples=100)
    assert (v.winner, v.significant) == ("b", True)
    assert v.confidence == pytest.approx(0.999)
    assert "accuracy" in v.reason and "B wins" in v.reason
    v = compare("latency_ms", result(12.0, 0.001), higher_is_better=False, min_samples=100)
    assert v.winner == "a"
    v = compare("latency_ms", result(-12.0, 0.001), higher_is_better=False, min_samples=100)
    assert v.winner == "b"


def test_compare_needs_significance_and_samples() -> None:
    v = compare("accuracy", result(0.03, 0.2), higher_is_better=True, min_samples=100)
    assert (v.winner, v.significant) == (None, False)
    assert "no significant difference" in v.reason
    v = compare("accuracy", result(0.03, 0.04), alpha=0.01, higher_is_better=True, min_samples=1)
    assert v.winner is None
    v = compare("accuracy", result(0.03, 1e-9, n=50), higher_is_better=True, min_samples=100)
    assert (v.winner, v.significant) == (None, False)
    assert "too few samples" in v.reason
    v = compare("accuracy", result(0.03, math.nan), higher_is_better=True, min_samples=1)
    assert (v.winner, v.significant) == (None, False)


def test_compare_chi_square_has_no_winner() -> None:
    r = chi_square_counts([100, 300, 600], [300, 300, 400])
    v = compare("predicted class", r, higher_is_better=True, min_samples=100)
    assert (v.winner, v.significant) == (None, True)
    assert "no direction" in v.reason


def test_compare_end_to_end() -> None:
    r = two_proportions(120, 1000, 160, 1000)
    v = compare("click rate", r, higher_is_better=True, min_samples=500)
    assert v.winner == "b"
    assert v.confidence == pytest.approx(1 - r.p_value)
