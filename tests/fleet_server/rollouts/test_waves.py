"""Wave sizes and deterministic device selection (edgefleet.fleet_server.rollouts.waves)."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.fleet_server.rollouts.waves import (
    order_devices,
    pick_percent,
    split_ab,
    wave_sizes,
)

FAST = settings(max_examples=150, deadline=None)

fraction_lists = st.lists(
    st.floats(min_value=0.001, max_value=0.999, allow_nan=False), max_size=6, unique=True
).map(lambda xs: (*sorted(xs), 1.0))
device_lists = st.lists(st.text(min_size=1, max_size=8), max_size=60, unique=True)


def ids(n: int) -> list[str]:
    return [f"dev-{i:04d}" for i in range(n)]


# --- wave_sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, (1,)),
        (2, (1, 2)),
        (3, (1, 2, 3)),
        (4, (1, 2, 3, 4)),
        (10, (1, 2, 5, 10)),
        (100, (1, 10, 50, 100)),
        (1000, (10, 100, 500, 1000)),
        (150, (2, 15, 75, 150)),
    ],
)
def test_default_waves(n: int, expected: tuple[int, ...]) -> None:
    assert wave_sizes(n) == expected


def test_float_products_do_not_add_a_device() -> None:
    # 0.1 * 30 is 3.0000000000000004 in binary floating point: still 3 devices.
    assert wave_sizes(30, (0.1, 1.0)) == (3, 30)
    assert wave_sizes(100, (0.07, 0.29, 1.0)) == (7, 29, 100)


def test_custom_fractions() -> None:
    assert wave_sizes(20, (0.05, 0.25, 1.0)) == (1, 5, 20)
    assert wave_sizes(5, (1.0,)) == (5,)
    assert wave_sizes(200, [0.5, 1]) == (100, 200)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((), "must not be empty"),
        ((0.0, 1.0), r"\(0, 1\]"),
        ((-0.1, 1.0), r"\(0, 1\]"),
        ((0.5, 1.5), r"\(0, 1\]"),
        ((math.nan, 1.0), r"\(0, 1\]"),
        ((0.5, 0.5, 1.0), "strictly increasing"),
        ((0.5, 0.2, 1.0), "strictly increasing"),
        ((0.1, 0.5), "last wave fraction must be 1.0"),
    ],
)
def test_bad_fractions(fractions: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wave_sizes(10, fractions)


@pytest.mark.parametrize("n", [0, -3])
def test_needs_a_device(n: int) -> None:
    with pytest.raises(ValueError, match="at least one device"):
        wave_sizes(n)


@FAST
@given(st.integers(min_value=1, max_value=100_000), fraction_lists)
def test_wave_sizes_properties(n: int, fractions: tuple[float, ...]) -> None:
    sizes = wave_sizes(n, fractions)
    assert sizes[-1] == n
    assert sizes[0] >= 1
    assert all(b > a for a, b in itertools.pairwise(sizes))
    assert len(sizes) <= len(fractions)
    # Only trailing waves are dropped (once every device is in), so wave i belongs to
    # fraction i: it holds at least ceil(f * n) devices (up to float noise) and more only
    # to add at least one device to the wave before.
    previous = 0
    for size, f in zip(sizes, fractions, strict=False):
        ceiling = math.ceil(round(f * n, 9))
        assert min(ceiling, n) <= size <= max(ceiling, previous + 1)
        previous = size
    wanted = [math.ceil(round(f * n, 9)) for f in fractions]
    if all(a < b for a, b in itertools.pairwise(wanted)):  # distinct counts: no adjustment
        assert sizes == tuple(wanted)


# --- order_devices / pick_percent -------------------------------------------------------


def test_order_is_deterministic_and_input_order_free() -> None:
    devices = ids(50)
    shuffled = devices[:]
    random.Random(7).shuffle(shuffled)
    assert order_devices(devices, "rollout-1") == order_devices(shuffled, "rollout-1")
    assert order_devices(devices, "rollout-1") == order_devices(iter(devices), "rollout-1")
    assert order_devices(devices, "rollout-1") != devices  # actually shuffled
    assert order_devices(devices, "rollout-1") != order_devices(devices, "rollout-2")


def test_order_known_value() -> None:
    # Pinned so that a change of the hashing scheme (which would reshuffle the waves of
    # every rollout in flight after an upgrade) cannot go unnoticed.
    assert order_devices(["a", "b", "c", "d"], "s") == ["d", "a", "b", "c"]


def test_order_counts_duplicates_once() -> None:
    assert sorted(order_devices(["x", "y", "x"], "s")) == ["x", "y"]


@FAST
@given(device_lists, st.text(max_size=10), st.randoms(use_true_random=False))
def test_order_is_a_permutation(devices: list[str], seed: str, rnd: random.Random) -> None:
    ordered = order_devices(devices, seed)
    assert sorted(ordered) == sorted(devices)
    shuffled = devices[:]
    rnd.shuffle(shuffled)
    assert order_devices(shuffled, seed) == ordered


@pytest.mark.parametrize(
    ("n", "percent", "expected"),
    [
        (100, 1, 1),
        (100, 10, 10),
        (100, 100, 100),
        (3, 1, 1),
        (3, 50, 2),
        (1000, 0.5, 5),
        (7, 0.001, 1),
    ],
)
def test_pick_percent_counts(n: int, percent: float, expected: int) -> None:
    picked = pick_percent(ids(n), percent, "seed")
    assert len(picked) == expected
    assert picked == order_devices(ids(n), "seed")[:expected]


def test_pick_percent_empty_and_bad_percent() -> None:
    assert pick_percent([], 10, "seed") == []
    for bad in (0, -1, 100.5, math.nan):
        with pytest.raises(ValueError, match=r"\(0, 100\]"):
            pick_percent(ids(5), bad, "seed")


@FAST
@given(
    device_lists,
    st.floats(min_value=0.01, max_value=100),
    st.floats(min_value=0.01, max_value=100),
    st.text(max_size=5),
)
def test_pick_percent_grows_monotonically(
    devices: list[str], p: float, q: float, seed: str
) -> None:
    small, large = sorted((p, q))
    a, b = pick_percent(devices, small, seed), pick_percent(devices, large, seed)
    assert b[: len(a)] == a  # a larger percentage only adds devices
    if devices:
        assert 1 <= len(a) <= len(devices)


# --- split_ab ---------------------------------------------------------------------------


def test_split_ab_examples() -> None:
    a, b = split_ab(ids(10), "exp")
    assert len(a) == 5 and len(b) == 5
    assert sorted(a + b) == ids(10)
    assert split_ab(list(reversed(ids(10))), "exp") == (a, b)
    a, b = split_ab(ids(2), "exp", share_a=0.01)
    assert len(a) == 1 and len(b) == 1
    a, b = split_ab(ids(100), "exp", share_a=0.2)
    assert len(a) == 20 and len(b) == 80


def test_split_ab_is_not_the_canary_order() -> None:
    devices = ids(100)
    a, _ = split_ab(devices, "rollout-1", share_a=0.1)
    assert a != order_devices(devices, "rollout-1")[:10]


def test_split_ab_errors() -> None:
    with pytest.raises(ValueError, match="at least two devices"):
        split_ab(["only"], "s")
    with pytest.raises(ValueError, match="at least two devices"):
        split_ab(["x", "x"], "s")
    for bad in (0.0, 1.0, -0.5, math.nan):
        with pytest.raises(ValueError, match=r"share_a must be in \(0, 1\)"):
            split_ab(ids(4), "s", share_a=bad)


@FAST
@given(
    st.lists(st.text(min_size=1, max_size=6), min_size=2, max_size=60, unique=True),
    st.text(max_size=5),
    st.floats(min_value=0.001, max_value=0.999),
)
def test_split_ab_properties(devices: list[str], seed: str, share: float) -> None:
    a, b = split_ab(devices, seed, share_a=share)
    assert a and b
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(devices)
    target = share * len(devices)
    if 1 <= target <= len(devices) - 1:
        assert abs(len(a) - target) <= 0.5 + 1e-9
    else:
        assert len(a) in (1, len(devices) - 1)
