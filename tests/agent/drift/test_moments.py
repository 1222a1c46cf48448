"""Parallel moment merges equal the moments of the concatenated data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.drift import DriftDataError, Moments
from edgefleet.agent.drift.moments import batch_moments

values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=0, max_size=40)


def of(xs: list[float]) -> Moments:
    arr = np.array(xs, dtype=np.float64).reshape(-1, 1)
    return Moments.from_arrays(batch_moments(arr, np.isfinite(arr)), 0)


def close(a: Moments, b: Moments) -> None:
    assert a.n == b.n
    if a.n == 0:
        assert b == Moments(0)
        return
    scale = max(1.0, abs(a.mean), abs(b.mean), a.max - a.min) ** 4 * max(a.n, 1)
    for u, v in zip(a.as_tuple(), b.as_tuple(), strict=True):
        assert u == pytest.approx(v, rel=1e-7, abs=1e-9 * scale)


@settings(max_examples=150, deadline=None)
@given(values, values)
def test_merge_equals_concatenation(a: list[float], b: list[float]) -> None:
    close(of(a).merge(of(b)), of(a + b))


@settings(max_examples=100, deadline=None)
@given(values, values, values)
def test_merge_is_associative_and_commutative(a: list[float], b: list[float],
                                              c: list[float]) -> None:
    ma, mb, mc = of(a), of(b), of(c)
    close(ma.merge(mb).merge(mc), ma.merge(mb.merge(mc)))
    close(ma.merge(mb), mb.merge(ma))


def test_variance_and_kurtosis_of_a_normal_sample() -> None:
    m = of(list(np.random.default_rng(0).normal(3.0, 2.0, size=200_000)))
    assert m.mean == pytest.approx(3.0, abs=0.02)
    assert m.variance == pytest.approx(4.0, rel=0.02)
    assert m.kurtosis == pytest.approx(3.0, rel=0.03)


@pytest.mark.parametrize("bad", [
    None, [], [1, 0.0, 0.0, 0.0, 0.0, 1.0], [-1, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0],
    [True, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [2, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0],
    [2, 0.0, 1.0, 0.0, 1.0, 2.0, 1.0], [2, float("nan"), 1.0, 0.0, 1.0, 1.0, 2.0],
    [2, "0", 1.0, 0.0, 1.0, 1.0, 2.0], [0, 0.0, 0.0, 0.0, 0.0, 1.0, None],
])
def test_from_list_rejects_malformed(bad: object) -> None:
    with pytest.raises(DriftDataError):
        Moments.from_list(bad, max_n=10**9)


def test_to_list_round_trip() -> None:
    m = of([1.0, 2.0, 4.0])
    assert Moments.from_list(m.to_list(), max_n=10) == m
    assert Moments.from_list(Moments(0).to_list(), max_n=10) == Moments(0)
