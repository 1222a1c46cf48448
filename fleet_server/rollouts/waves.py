"""Wave sizes and deterministic device selection for staged rollouts and A/B tests.

Pure functions, no I/O. Device order comes from ``sha256(seed + "\\0" + device_id)``, so
the same rollout (same seed) always picks the same canaries whatever order the database
returns the devices in, and a retry or a server restart never reshuffles a wave.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

from edgefleet.fleet_server.rollouts.model import DEFAULT_WAVES

# Products like 0.1 * 30 come out as 3.0000000000000004 in binary floating point; rounding
# before ``ceil`` keeps them from adding a device nobody asked for.
_ROUND_DIGITS = 9


def _ceil(x: float) -> int:
    return math.ceil(round(x, _ROUND_DIGITS))


def _check_fractions(fractions: Sequence[float]) -> None:
    if not fractions:
        raise ValueError("wave fractions must not be empty")
    previous = 0.0
    for i, f in enumerate(fractions):
        if not math.isfinite(f) or not 0.0 < f <= 1.0:
            raise ValueError(f"wave fraction #{i + 1} is {f!r}: each must be in (0, 1]")
        if f <= previous:
            raise ValueError(
                f"wave fractions must be strictly increasing: #{i + 1} is {f!r} after {previous!r}"
            )
        previous = f
    if fractions[-1] != 1.0:
        raise ValueError(
            f"the last wave fraction must be 1.0 (every device), got {fractions[-1]!r}"
        )


def wave_sizes(n_devices: int, fractions: Sequence[float] = DEFAULT_WAVES) -> tuple[int, ...]:
    """Cumulative device counts after each wave for a rollout over ``n_devices`` devices.

    Each wave holds ``ceil(fraction * n_devices)`` devices but at least one more than the
    wave before; waves that would add no device (fewer devices than waves) are dropped, so
    the result is strictly increasing and ends at ``n_devices``. For example 3 devices over
    1/10/50/100 % give ``(1, 2, 3)``.

    Raises:
        ValueError: ``n_devices < 1``, or ``fractions`` empty, not strictly increasing,
            outside (0, 1], or not ending at 1.0.
    """
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"a rollout needs at least one device, got n_devices={n_devices!r}")
    _check_fractions(fractions)
    sizes: list[int] = []
    previous = 0
    for f in fractions:
        count = min(max(_ceil(f * n_devices), previous + 1), n_devices)
        if count > previous:
            sizes.append(count)
            previous = count
    return tuple(sizes)


def _key(seed: str, device_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{device_id}".encode()).digest()


def order_devices(device_ids: Iterable[str], seed: str) -> list[str]:
    """The devices in a pseudo-random order fixed by ``seed`` (duplicates counted once).

    The order depends only on the set of ids and the seed, never on the input order.
    """
    return sorted(set(device_ids), key=lambda d: (_key(seed, d), d))


def pick_percent(device_ids: Iterable[str], percent: float, seed: str) -> list[str]:
    """The first ``ceil(percent / 100 * n)`` devices of :func:`order_devices`.

    At least one device is picked when there is any; an empty input gives an empty list.
    Growing ``percent`` with the same seed only ever adds devices.

    Raises:
        ValueError: ``percent`` outside (0, 100].
    """
    if not math.isfinite(percent) or not 0.0 < percent <= 100.0:
        raise ValueError(f"percent must be in (0, 100], got {percent!r}")
    ordered = order_devices(device_ids, seed)
    n = len(ordered)
    count = min(max(_ceil(percent / 100.0 * n), 1), n)
    return ordered[:count]


def split_ab(
    device_ids: Iterable[str], seed: str, share_a: float = 0.5
) -> tuple[list[str], list[str]]:
    """Split devices into two randomized arms (A, B), both non-empty.

    Arm A gets ``round(share_a * n)`` devices, clamped to ``[1, n - 1]``. The order is
    salted apart from :func:`order_devices` so that an A/B test with the rollout's own seed
    does not put exactly the rollout's canaries in arm A.

    Raises:
        ValueError: fewer than two devices, or ``share_a`` outside (0, 1).
    """
    if not math.isfinite(share_a) or not 0.0 < share_a < 1.0:
        raise ValueError(f"share_a must be in (0, 1), got {share_a!r}")
    ordered = order_devices(device_ids, f"{seed}\0ab")
    n = len(ordered)
    if n < 2:
        raise ValueError(f"an A/B split needs at least two devices, got {n}")
    count_a = min(max(round(share_a * n), 1), n - 1)
    return ordered[:count_a], ordered[count_a:]
