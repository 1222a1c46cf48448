"""Merging summaries (device → group → fleet): exact counts, order-free, accurate KS."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.drift import (
    DriftDataError,
    ReferenceProfile,
    SummaryBuilder,
    WindowSummary,
    ks_exact,
    ks_sketches,
    merge_summaries,
    psi,
)
from edgefleet.agent.drift.bins import bin_index

Gen = Callable[..., tuple[np.ndarray, np.ndarray]]


def summarize(reference: ReferenceProfile, x: np.ndarray, y: np.ndarray,
              start: float = 0.0, version: str = "1.0.0") -> WindowSummary:
    builder = SummaryBuilder(reference, version)
    builder.add_batch(x, y)
    return builder.finish(start, start + 60.0)


def assert_same(a: WindowSummary, b: WindowSummary) -> None:
    assert (a.start_ts, a.end_ts, a.windows) == (b.start_ts, b.end_ts, b.windows)
    for ca, cb in zip(a.columns, b.columns, strict=True):
        assert np.array_equal(ca.counts, cb.counts)
        assert ca.nonfinite == cb.nonfinite
        assert ca.sketch.n == cb.sketch.n
        assert ca.moments.n == cb.moments.n
        assert ca.moments.mean == pytest.approx(cb.moments.mean, rel=1e-9, abs=1e-12)
        assert ca.moments.m2 == pytest.approx(cb.moments.m2, rel=1e-9, abs=1e-9)
        assert (ca.moments.min, ca.moments.max) == (cb.moments.min, cb.moments.max)
        for q in (0.1, 0.5, 0.9):
            if ca.sketch.n and ca.moments.min == ca.moments.max:
                # one value only: every quantile is it (its rank is 0 or 1, never q)
                assert cb.sketch.get_quantile(q) == pytest.approx(ca.moments.min)
            elif ca.sketch.n:
                assert ca.sketch.get_rank(cb.sketch.get_quantile(q)) == \
                    pytest.approx(q, abs=0.03)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 400), min_size=3, max_size=3), st.integers(0, 2**32 - 1),
       st.permutations([0, 1, 2]))
def test_merge_is_associative_and_commutative(reference: ReferenceProfile, gen: Gen,
                                              sizes: list[int], seed: int,
                                              order: list[int]) -> None:
    rng = np.random.default_rng(seed)
    parts = [summarize(reference, *gen(rng, n), start=float(i)) for i, n in enumerate(sizes)]
    a, b, c = parts
    left = merge_summaries([merge_summaries([a, b]), c])
    right = merge_summaries([a, merge_summaries([b, c])])
    shuffled = merge_summaries([parts[i] for i in order])
    assert_same(left, right)
    assert_same(left, shuffled)
    assert left.windows == 3 and left.predictions == sum(sizes)


def test_psi_from_merged_bins_equals_central(reference: ReferenceProfile, gen: Gen) -> None:
    rng = np.random.default_rng(7)
    devices = [gen(rng, int(rng.integers(50, 800)), scale=1.1) for _ in range(100)]
    merged = merge_summaries([summarize(reference, x, y) for x, y in devices])
    x = np.concatenate([d[0] for d in devices])
    y = np.concatenate([d[1] for d in devices])
    central = np.concatenate((x, y), axis=1)
    for j, (ref, col) in enumerate(zip(reference.columns, merged.columns, strict=True)):
        counts = np.bincount(bin_index(ref.edges, central[:, j]), minlength=ref.bins)
        assert np.array_equal(col.counts, counts)
        assert psi(ref.stats.counts, col.counts) == psi(ref.stats.counts, counts)


def test_ks_from_100_merged_device_sketches(reference: ReferenceProfile, gen: Gen) -> None:
    rng = np.random.default_rng(11)
    devices = [gen(rng, int(rng.integers(200, 3000)), scale=1.15) for _ in range(100)]
    merged = merge_summaries([summarize(reference, x, y) for x, y in devices])
    ref_rng = np.random.default_rng(12345)  # the reference fixture's raw data
    ref_x, _ = gen(ref_rng, 50_000)
    x = np.concatenate([d[0] for d in devices])
    for j in range(x.shape[1]):
        exact = ks_exact(ref_x[:, j], x[:, j])
        approx = ks_sketches(reference.features[j].stats.sketch, merged.features[j].sketch)
        assert abs(approx - exact) <= 0.01, (j, approx, exact)


def test_merge_refuses_mixed_versions(reference: ReferenceProfile, gen: Gen) -> None:
    rng = np.random.default_rng(0)
    a = summarize(reference, *gen(rng, 10))
    b = summarize(reference, *gen(rng, 10), version="2.0.0")
    with pytest.raises(DriftDataError):
        merge_summaries([a, b])
    with pytest.raises(DriftDataError):
        merge_summaries([])
