"""Reference profiles: bins, counts, validation and a JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.agent.drift import DriftConfigError, DriftDataError, ReferenceProfile, kll


def test_bins_are_quantiles_with_open_ends(reference: ReferenceProfile) -> None:
    col = reference.features[0]
    assert col.bins == 10 and col.edges.size == 9
    assert np.all(np.diff(col.edges) > 0)
    assert int(col.stats.counts.sum()) == col.stats.n == 50_000
    assert np.all(np.abs(col.stats.counts - 5_000) <= 1)
    assert col.stats.sketch.n == 50_000
    assert col.stats.moments.variance == pytest.approx(1.0, rel=0.03)


def test_ties_deduplicate_edges_and_non_finite_values_are_counted_apart() -> None:
    x = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, np.nan], [0.0, np.inf], [0.0, 3.0]])
    profile = ReferenceProfile.build(x, ["const", "gappy"], np.zeros((5, 1)), ["y"])
    const, gappy = profile.features
    assert const.edges.tolist() == [0.0] and const.stats.counts.tolist() == [0, 5]
    assert gappy.stats.nonfinite == 2 and gappy.stats.n == 3
    assert int(gappy.stats.counts.sum()) == 3
    assert profile.outputs[0].bins == 2


def test_all_nan_column_gets_one_bin() -> None:
    profile = ReferenceProfile.build(np.full((4, 1), np.nan), ["x"], np.ones(4), ["y"])
    col = profile.features[0]
    assert col.bins == 1 and col.stats.nonfinite == 4 and col.stats.n == 0


@pytest.mark.parametrize(("x", "names", "y"), [
    (np.zeros((3, 2)), ["a"], np.zeros((3, 1))),
    (np.zeros((3, 1)), ["a"], np.zeros((4, 1))),
    (np.zeros((0, 1)), ["a"], np.zeros((0, 1))),
    (np.zeros((3, 2)), ["a", "a"], np.zeros((3, 1))),
    (np.zeros((3, 1)), [""], np.zeros((3, 1))),
    ([["x"], ["y"]], ["a"], np.zeros((2, 1))),
    (np.zeros((3, 1, 1)), ["a"], np.zeros((3, 1))),
])
def test_build_validates_input(x: object, names: list[str], y: object) -> None:
    with pytest.raises(DriftDataError):
        ReferenceProfile.build(x, names, y, ["y"])


def test_bins_out_of_range() -> None:
    with pytest.raises(DriftConfigError):
        ReferenceProfile.build(np.zeros((3, 1)), ["a"], np.zeros((3, 1)), ["y"], bins=1)


def test_json_round_trip_is_lossless(reference: ReferenceProfile) -> None:
    data = json.loads(json.dumps(reference.to_dict(), allow_nan=False))
    assert data["v"] == 1
    back = ReferenceProfile.from_dict(data)
    assert back.digest == reference.digest
    for a, b in zip(reference.columns, back.columns, strict=True):
        assert a.name == b.name and np.array_equal(a.edges, b.edges)
        assert np.array_equal(a.stats.counts, b.stats.counts)
        assert a.stats.moments == b.stats.moments
        for u, v in zip(kll.items_and_weights(a.stats.sketch),
                        kll.items_and_weights(b.stats.sketch), strict=True):
            assert np.array_equal(u, v)


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(v=2),
    lambda d: d["features"][0].update(edges=[1.0, 0.0]),
    lambda d: d["features"][0].update(edges=[0.0, float("inf")]),
    lambda d: d["features"][0]["c"].append(0),
    lambda d: d["features"][0].update(name=d["features"][1]["name"]),
    lambda d: d.pop("outputs"),
    lambda d: d.update(features={}),
])
def test_from_dict_rejects_malformed(reference: ReferenceProfile, mutate: object) -> None:
    data = json.loads(json.dumps(reference.to_dict()))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(DriftDataError):
        ReferenceProfile.from_dict(data)
