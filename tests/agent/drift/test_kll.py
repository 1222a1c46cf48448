"""The compact KLL encoding: lossless at precision 4, close at 3, and strict on input."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.drift import DriftDataError, kll

SIZES = [0, 1, 2, 7, 199, 200, 201, 650, 5_000, 200_000]


def sketch_of(n: int, seed: int = 0) -> kll.Sketch:
    s = kll.new_sketch()
    if n:
        s.update(np.random.default_rng(seed).standard_t(3, size=n).astype(np.float32))
    return s


@pytest.mark.parametrize("n", SIZES)
def test_lossless_round_trip(n: int) -> None:
    s = sketch_of(n)
    back = kll.decode(kll.encode(s, precision=4))
    assert (back.n, back.num_retained) == (s.n, s.num_retained)
    for a, b in zip(kll.items_and_weights(s), kll.items_and_weights(back), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("n", SIZES)
def test_rounded_round_trip_keeps_structure_and_values(n: int) -> None:
    s = sketch_of(n)
    back = kll.decode(kll.encode(s, precision=3))
    assert (back.n, back.num_retained) == (s.n, s.num_retained)
    (xa, wa), (xb, wb) = kll.items_and_weights(s), kll.items_and_weights(back)
    # Rounding is monotone, so the sorted items still line up one to one; only items that
    # round to the same value may trade places (the sketch's compaction is random, so
    # which ones do varies from run to run). Their weights must agree per rounded value.
    assert np.all(np.abs(xa - xb) <= 3.1e-5 * np.maximum(np.abs(xa), 1e-30))
    _, group = np.unique(xb, return_inverse=True)
    assert np.array_equal(np.bincount(group, weights=wa), np.bincount(group, weights=wb))
    if n:
        assert (back.get_min_value(), back.get_max_value()) == \
            (s.get_min_value(), s.get_max_value())


def test_capacity_formula_matches_datasketches() -> None:
    for k in (kll.K, kll.REFERENCE_K):
        for n in [2, 150, 201, 500, 1_000, 3_000, 20_000, 100_000]:
            s = kll.new_sketch(k)
            s.update(np.random.default_rng(n).random(n).astype(np.float32))
            blob = bytes(s.serialize())
            num_levels = blob[18]
            offsets = struct.unpack_from(f"<{num_levels}I", blob, 20)
            retained = (len(blob) - 28 - 4 * num_levels) // 4
            assert offsets[0] + retained == kll.total_capacity(k, num_levels)


def test_decode_insists_on_the_expected_k() -> None:
    s = kll.new_sketch(kll.REFERENCE_K)
    s.update(np.arange(5000, dtype=np.float32))
    text = kll.encode(s, precision=4)
    assert kll.decode(text, k=kll.REFERENCE_K).n == 5000
    with pytest.raises(DriftDataError):
        kll.decode(text)


def test_encoding_is_small() -> None:
    assert len(kll.encode(sketch_of(200_000), precision=3)) < 1800


def _raw(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


def _pack(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


@pytest.mark.parametrize("mutate", [
    lambda d: d[:-1],                                   # item bytes missing
    lambda d: d + b"\0",                                # trailing byte
    lambda d: d[:4] + struct.pack("<Q", 1001) + d[12:],  # n no longer the total weight
    lambda d: bytes([2]) + d[1:],                       # unknown format
    lambda d: d[:1] + bytes([5]) + d[2:],               # unknown precision
    lambda d: d[:2] + struct.pack("<H", 100) + d[4:],   # different k
    lambda d: d[:12] + bytes([70]) + d[13:],            # too many levels
])
def test_decode_rejects_tampered_payloads(mutate: object) -> None:
    data = _raw(kll.encode(sketch_of(1000), precision=3))
    with pytest.raises(DriftDataError):
        kll.decode(_pack(mutate(data)))  # type: ignore[operator]


def test_decode_rejects_oversized_and_non_text() -> None:
    text = kll.encode(sketch_of(1000))
    with pytest.raises(DriftDataError):
        kll.decode(text, max_chars=len(text) - 1)
    bomb = base64.b64encode(zlib.compress(b"\0" * 10_000_000)).decode()
    for bad in [bomb, 42, None, "not base64!", "", base64.b64encode(b"junk").decode()]:
        with pytest.raises(DriftDataError):
            kll.decode(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzzed_payloads_only_raise_drift_data_error(blob: bytes) -> None:
    for text in (_pack(blob), base64.b64encode(blob).decode()):
        try:
            s = kll.decode(text)
        except DriftDataError:
            continue
        assert s.n >= 0


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzzed_byte_flips_in_valid_payloads(data: st.DataObject) -> None:
    raw = bytearray(_raw(kll.encode(sketch_of(700, seed=1), precision=3)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        s = kll.decode(_pack(bytes(raw)))
    except DriftDataError:
        return
    lo, hi = s.get_min_value(), s.get_max_value()
    assert lo <= s.get_quantile(0.5) <= hi
