"""KLL sketches (Apache DataSketches) and their compact, validated text encoding.

The stock ``serialize()`` stores every retained float32 as 4 raw bytes (about 2.5 KB at
k=200 for a long window, 3.4 KB in base64): too big for the per-window budget. The
compact encoding keeps the sketch's exact structure (k, n, the size of every level,
min, max) and rewrites only the items: each level is sorted (level 0 may be unsorted
in a sketch; order inside a level carries no meaning), mapped to order-preserving
unsigned integers, optionally rounded to their top 3 bytes, delta coded, split into
byte planes and zlib-compressed, then base64 encoded.

``precision=3`` rounds items to 24 bits of their order-preserving representation (a
relative error below 2^-15 ≈ 3e-5, far below KLL's own rank error of about 1.3% at
k=200); ranks only move among values closer than that. ``precision=4`` is lossless and
used for reference profiles. Decoding rebuilds the DataSketches binary image and
deserializes it, after checking that every field is consistent (KLL's total weight
identity ``n == sum(size_h * 2^h)``, level capacities, sizes), so untrusted input can
neither crash nor bloat the server.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from typing import Any

import numpy as np
from datasketches import kll_floats_sketch

from edgefleet.agent.drift.errors import DriftConfigError, DriftDataError

K = 200
"""KLL accuracy parameter of window sketches (normalized rank error ≈ 1.3%)."""
REFERENCE_K = 1000
"""KLL accuracy parameter of reference sketches (rank error ≈ 0.3%): the reference is
sent once per model, so it can afford a larger sketch, and every KS is computed
against it, so its error would otherwise count twice in fleet-wide KS."""
_M = 8
_FAMILY = 15
_FORMAT = 1
_MAX_LEVELS = 61
MAX_N = 1 << 48
"""Largest stream length accepted from the wire."""
DEFAULT_MAX_CHARS = 8192
"""Largest encoded sketch accepted (characters of base64)."""

Sketch = Any  # datasketches.kll_floats_sketch (untyped extension class)


def new_sketch(k: int = K) -> Sketch:
    """An empty KLL float sketch (k = :data:`K` unless given)."""
    return kll_floats_sketch(k)


def rank_error(sketch: Sketch) -> float:
    """Single-rank error bound (99% confidence) of ``sketch``; 0 when it is exact."""
    if sketch.is_empty() or not sketch.is_estimation_mode():
        return 0.0
    return float(sketch.normalized_rank_error(False))


def _pow3(depth: int) -> int:
    return int(3**depth)


def _int_cap_aux_aux(k: int, depth: int) -> int:
    twok = k << 1
    tmp = (twok << depth) // _pow3(depth)
    return (tmp + 1) >> 1


def _int_cap_aux(k: int, depth: int) -> int:
    if depth <= 30:
        return _int_cap_aux_aux(k, depth)
    half = depth // 2
    return _int_cap_aux_aux(_int_cap_aux_aux(k, half), depth - half)


def total_capacity(k: int, num_levels: int) -> int:
    """DataSketches' buffer capacity for ``num_levels`` levels (kll_helper)."""
    return sum(max(_M, _int_cap_aux(k, num_levels - h - 1)) for h in range(num_levels))


def _ordered(bits: np.ndarray) -> np.ndarray:
    """float32 bit patterns -> unsigned integers in the same order as the floats."""
    neg = (bits >> np.uint32(31)).astype(bool)
    return np.where(neg, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


def _unordered(keys: np.ndarray) -> np.ndarray:
    top = (keys >> np.uint32(31)).astype(bool)
    return np.where(top, keys & np.uint32(0x7FFFFFFF), ~keys).astype(np.uint32)


def _levels(blob: bytes) -> tuple[int, int, int, list[int], float, float, np.ndarray]:
    """Parse a DataSketches KLL float image: (k, min_k, n, level sizes, min, max, items)."""
    preamble, serial, family, flags, k = struct.unpack_from("<BBBBH", blob, 0)
    if family != _FAMILY:
        raise DriftDataError("kll: not a KLL sketch")
    if flags & 1:
        return k, k, 0, [], 0.0, 0.0, np.zeros(0, np.float32)
    if flags & 4:
        (item,) = struct.unpack_from("<f", blob, 8)
        return k, k, 1, [1], item, item, np.array([item], np.float32)
    (n,) = struct.unpack_from("<Q", blob, 8)
    min_k, num_levels = struct.unpack_from("<HB", blob, 16)
    offsets = np.frombuffer(blob, "<u4", num_levels, 20).astype(np.int64)
    lo, hi = struct.unpack_from("<ff", blob, 20 + 4 * num_levels)
    items = np.frombuffer(blob, "<f4", offset=28 + 4 * num_levels)
    capacity = int(offsets[0]) + items.size
    bounds = [*offsets.tolist(), capacity]
    sizes = [bounds[i + 1] - bounds[i] for i in range(num_levels)]
    del preamble, serial
    return k, min_k, n, sizes, lo, hi, items


def encode(sketch: Sketch, precision: int = 3) -> str:
    """Compact base64 text for ``sketch`` (see the module docstring).

    Raises:
        DriftConfigError: ``precision`` is not 3 or 4.
    """
    if precision not in (3, 4):
        raise DriftConfigError("kll precision must be 3 (rounded) or 4 (lossless) bytes")
    k, min_k, n, sizes, lo, hi, items = _levels(bytes(sketch.serialize()))
    header = struct.pack("<BBHHQB", _FORMAT, precision, k, min_k, n, len(sizes))
    header += struct.pack(f"<{len(sizes)}I", *sizes)
    if n:
        header += struct.pack("<ff", lo, hi)
    keys = _ordered(items.view(np.uint32))
    if precision == 3:
        keys = (np.minimum(keys, np.uint32(0xFFFFFF7F)) + np.uint32(0x80)) >> np.uint32(8)
    parts, start = [], 0
    for size in sizes:
        level = np.sort(keys[start:start + size])
        start += size
        parts.append(np.diff(level, prepend=np.uint32(0)).astype(np.uint32))
    deltas = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    planes = deltas.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :precision].T
    payload = zlib.compress(header + planes.tobytes(), 9)
    return base64.b64encode(payload).decode("ascii")


def _decompress(text: object, max_chars: int) -> bytes:
    if not isinstance(text, str):
        raise DriftDataError("kll: expected a base64 string")
    if len(text) > max_chars:
        raise DriftDataError(f"kll: encoded sketch longer than {max_chars} characters")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        data = inflater.decompress(raw, 64 * 1024)
    except (binascii.Error, UnicodeEncodeError, zlib.error) as e:
        raise DriftDataError(f"kll: undecodable sketch ({e})") from e
    if inflater.unconsumed_tail or not inflater.eof:
        raise DriftDataError("kll: truncated or oversized sketch payload")
    return data


def decode(text: object, *, k: int = K, max_chars: int = DEFAULT_MAX_CHARS) -> Sketch:
    """Rebuild a sketch from :func:`encode` output, validating everything; the sketch
    must have been built with accuracy parameter ``k``.

    Raises:
        DriftDataError: anything malformed, inconsistent or oversized.
    """
    data = _decompress(text, max_chars)
    head = struct.calcsize("<BBHHQB")
    if len(data) < head:
        raise DriftDataError("kll: payload too short")
    fmt, precision, got_k, min_k, n, num_levels = struct.unpack_from("<BBHHQB", data, 0)
    if fmt != _FORMAT or precision not in (3, 4) or got_k != k or min_k != k:
        raise DriftDataError(f"kll: unsupported format {fmt}/{precision} or k {got_k}/{min_k}")
    if n > MAX_N or num_levels > _MAX_LEVELS or (n == 0) != (num_levels == 0):
        raise DriftDataError("kll: n or number of levels out of range")
    pos = head + 4 * num_levels
    if len(data) < pos + (8 if n else 0):
        raise DriftDataError("kll: payload too short for its levels")
    sizes = list(struct.unpack_from(f"<{num_levels}I", data, head))
    if n == 0:
        if len(data) != pos:
            raise DriftDataError("kll: trailing bytes after an empty sketch")
        return new_sketch(k)
    lo, hi = struct.unpack_from("<ff", data, pos)
    pos += 8
    retained = sum(sizes)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise DriftDataError("kll: min/max must be finite with min <= max")
    if sum(s << h for h, s in enumerate(sizes)) != n:
        raise DriftDataError("kll: level sizes do not add up to n")
    if retained > total_capacity(k, num_levels) or (num_levels > 1 and sizes[-1] == 0):
        raise DriftDataError("kll: level sizes exceed the sketch capacity")
    if len(data) != pos + retained * precision:
        raise DriftDataError("kll: item bytes do not match the level sizes")
    planes = np.frombuffer(data, np.uint8, retained * precision, pos).reshape(precision, -1)
    wide = np.zeros((retained, 4), np.uint8)
    wide[:, :precision] = planes.T
    deltas = wide.view("<u4").reshape(-1).astype(np.uint64)
    keys = np.empty(retained, np.uint64)
    start = 0
    for size in sizes:
        keys[start:start + size] = np.cumsum(deltas[start:start + size])
        start += size
    if retained and int(keys.max()) >= 1 << (8 * precision):
        raise DriftDataError("kll: item deltas overflow")
    keys32 = keys.astype(np.uint32)
    if precision == 3:
        keys32 = keys32 << np.uint32(8)
    bounds = _ordered(np.array([lo, hi], np.float32).view(np.uint32))
    keys32 = np.clip(keys32, bounds[0], bounds[1]).astype(np.uint32)
    items = _unordered(keys32).view(np.float32)
    if n == 1:
        sketch = new_sketch(k)
        sketch.update(float(items[0]))
        return sketch
    capacity = total_capacity(k, num_levels)
    offsets = np.cumsum([capacity - retained, *sizes[:-1]]).astype("<u4")
    blob = (struct.pack("<BBBBHBBQHBB", 5, 1, _FAMILY, 0, k, _M, 0, n, k, num_levels, 0)
            + offsets.tobytes() + struct.pack("<ff", lo, hi) + items.astype("<f4").tobytes())
    try:
        sketch = kll_floats_sketch.deserialize(blob)
    except (RuntimeError, ValueError) as e:
        raise DriftDataError(f"kll: sketch rejected by DataSketches ({e})") from e
    if sketch.n != n or sketch.num_retained != retained:
        raise DriftDataError("kll: rebuilt sketch does not match its header")
    return sketch


def items_and_weights(sketch: Sketch) -> tuple[np.ndarray, np.ndarray]:
    """Retained items (float64, sorted) and their weights (float64, 2^level)."""
    _, _, n, sizes, _, _, items = _levels(bytes(sketch.serialize()))
    if n == 0:
        return np.zeros(0), np.zeros(0)
    weights = np.repeat(np.exp2(np.arange(len(sizes))), sizes)
    order = np.argsort(items, kind="stable")
    return items[order].astype(np.float64), weights[order]
