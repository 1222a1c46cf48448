"""Window summaries: batching is exact, the wire form is small and strictly validated."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.agent.drift import DriftDataError, ReferenceProfile, SummaryBuilder, WindowSummary
from edgefleet.agent.drift.bins import bin_index

SIZE_GOAL_BYTES = 2500
Gen = Callable[..., tuple[np.ndarray, np.ndarray]]


def window(reference: ReferenceProfile, gen: Gen, n: int, seed: int = 0,
           batch: int = 64) -> WindowSummary:
    rng = np.random.default_rng(seed)
    builder = SummaryBuilder(reference, "1.0.0")
    x, y = gen(rng, n)
    for i in range(0, n, batch):
        builder.add_batch(x[i:i + batch], y[i:i + batch])
    return builder.finish(1_700_000_000.0, 1_700_000_060.0)


def test_batches_count_exactly_over_the_reference_edges(reference: ReferenceProfile,
                                                        gen: Gen) -> None:
    x, y = gen(np.random.default_rng(3), 1000)
    x[5, 1] = np.nan
    y[7, 0] = np.inf
    builder = SummaryBuilder(reference, "1.0.0")
    for i in range(0, 1000, 37):
        builder.add_batch(x[i:i + 37], y[i:i + 37])
    summary = builder.finish(0.0, 60.0)
    data = np.concatenate((x, y), axis=1)
    for j, (col, ref) in enumerate(zip(summary.columns, reference.columns, strict=True)):
        finite = data[np.isfinite(data[:, j]), j]
        expected = np.bincount(bin_index(ref.edges, finite), minlength=ref.bins)
        assert np.array_equal(col.counts, expected)
        assert col.nonfinite == 1000 - finite.size
        assert col.moments.mean == pytest.approx(finite.mean(), rel=1e-9)
        assert col.sketch.n == finite.size
    assert summary.predictions == 1000


def test_finish_starts_a_new_window(reference: ReferenceProfile, gen: Gen) -> None:
    builder = SummaryBuilder(reference, "1.0.0")
    builder.add_batch(*gen(np.random.default_rng(0), 10))
    builder.finish(0.0, 1.0)
    empty = builder.finish(1.0, 2.0)
    assert empty.predictions == 0 and all(c.sketch.is_empty() for c in empty.columns)


def test_add_batch_validates_shapes(reference: ReferenceProfile) -> None:
    builder = SummaryBuilder(reference, "1.0.0")
    with pytest.raises(DriftDataError):
        builder.add_batch(np.zeros((2, 3)), np.zeros((2, 1)))
    with pytest.raises(DriftDataError):
        builder.add_batch(np.zeros((2, 4)), np.zeros((3, 1)))


@pytest.mark.parametrize("n", [0, 1, 60, 600, 1000, 6000, 60_000])
def test_json_size_per_feature_and_round_trip(reference: ReferenceProfile, gen: Gen,
                                              n: int) -> None:
    summary = window(reference, gen, n, batch=1000)
    text = json.dumps(summary.to_dict(), separators=(",", ":"), allow_nan=False)
    assert len(text) / len(summary.columns) <= SIZE_GOAL_BYTES
    back = WindowSummary.from_dict(json.loads(text), reference)
    assert back.predictions == n and back.model_version == "1.0.0"
    for a, b in zip(summary.columns, back.columns, strict=True):
        assert np.array_equal(a.counts, b.counts) and a.moments == b.moments
        assert a.sketch.n == b.sketch.n


def _mutations() -> list[object]:
    def feature(d: dict, **kw: object) -> None:
        d["features"][0].update(kw)

    return [
        lambda d: d.update(v=2),
        lambda d: d.update(ref="0" * 16),
        lambda d: d.update(start=-1.0),
        lambda d: d.update(start=d["end"] + 1),
        lambda d: d.update(end=float("nan")),
        lambda d: d.update(windows=0),
        lambda d: d.update(model=""),
        lambda d: d.update(model=["1.0"]),
        lambda d: d.update(extra=1),
        lambda d: d["features"].pop(),
        lambda d: d["features"].reverse(),
        lambda d: feature(d, name="other"),
        lambda d: feature(d, c=d["features"][0]["c"][:-1]),
        lambda d: feature(d, c=[-1, *d["features"][0]["c"][1:]]),
        lambda d: feature(d, c=[1.5, *d["features"][0]["c"][1:]]),
        lambda d: feature(d, c=[True, *d["features"][0]["c"][1:]]),
        lambda d: feature(d, c=[d["features"][0]["c"][0] + 1, *d["features"][0]["c"][1:]]),
        lambda d: feature(d, nan=-1),
        lambda d: feature(d, kll="A" * 5000),
        lambda d: feature(d, kll=d["features"][1]["kll"]),
        lambda d: d["features"][0].pop("m"),
        lambda d: d["outputs"][0].update(nan=d["outputs"][0]["nan"] + 1),
    ]


@pytest.mark.parametrize("mutate", _mutations())
def test_from_dict_rejects_malformed(reference: ReferenceProfile, gen: Gen,
                                     mutate: object) -> None:
    data = window(reference, gen, 800).to_dict()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(DriftDataError):
        WindowSummary.from_dict(data, reference)


def test_from_dict_rejects_another_reference(reference: ReferenceProfile, gen: Gen) -> None:
    x, y = gen(np.random.default_rng(99), 5000)
    other = ReferenceProfile.build(x, [c.name for c in reference.features], y,
                                   [c.name for c in reference.outputs])
    with pytest.raises(DriftDataError):
        WindowSummary.from_dict(window(reference, gen, 300).to_dict(), other)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=True), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=6), kids, max_size=5)),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_summaries_raise_only_drift_data_error(reference: ReferenceProfile, gen: Gen,
                                                      data: st.DataObject) -> None:
    valid = _VALID.setdefault("summary", json.loads(json.dumps(
        window(reference, gen, 500).to_dict())))
    doc = copy.deepcopy(valid)
    for _ in range(data.draw(st.integers(1, 3))):
        node: object = doc
        path = []
        while isinstance(node, dict | list) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                            else list(range(len(node)))))
            path.append((node, key))
            node = node[key]
        if path:
            parent, key = path[-1]
            parent[key] = data.draw(json_value)
        else:
            doc = data.draw(json_value)
    with contextlib.suppress(DriftDataError):
        WindowSummary.from_dict(doc, reference)


_VALID: dict[str, object] = {}


def test_moments_across_chunk_flushes(reference: ReferenceProfile, gen: Gen) -> None:
    x, y = gen(np.random.default_rng(8), 40_000)
    builder = SummaryBuilder(reference, "1.0.0")
    for i in range(0, 40_000, 64):
        builder.add_batch(x[i:i + 64], y[i:i + 64])
    summary = builder.finish(0.0, 60.0)
    data = np.concatenate((x, y), axis=1)
    for j, col in enumerate(summary.columns):
        assert col.moments.n == 40_000
        assert col.moments.mean == pytest.approx(data[:, j].mean(), rel=1e-9, abs=1e-12)
        assert col.moments.variance == pytest.approx(data[:, j].var(ddof=1), rel=1e-9)
        assert (col.moments.min, col.moments.max) == (data[:, j].min(), data[:, j].max())
