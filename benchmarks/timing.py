"""Side-by-side timing: two callables measured alternately in the same process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pair:
    """Per-call latencies of two callables measured interleaved, in seconds."""

    a: np.ndarray
    b: np.ndarray

    @property
    def a_p50(self) -> float:
        return float(np.median(self.a))

    @property
    def b_p50(self) -> float:
        return float(np.median(self.b))

    @property
    def added_p50(self) -> float:
        """Median of the per-round differences ``b - a``: each round runs both back to
        back, so load that changes between rounds (other processes on a small machine)
        cancels out instead of landing on one side."""
        return float(np.median(self.b - self.a))


def interleaved(a: Callable[[], object], b: Callable[[], object], *, iterations: int,
                warmup: int) -> Pair:
    """Time ``a`` and ``b`` alternately (order flipped every round) so drift in clock
    speed, caches or background load hits both equally."""
    for _ in range(warmup):
        a()
        b()
    clock = time.perf_counter_ns
    ta = np.empty(iterations, dtype=np.int64)
    tb = np.empty(iterations, dtype=np.int64)
    for i in range(iterations):
        if i % 2:
            start = clock()
            b()
            mid = clock()
            a()
            end = clock()
            tb[i], ta[i] = mid - start, end - mid
        else:
            start = clock()
            a()
            mid = clock()
            b()
            end = clock()
            ta[i], tb[i] = mid - start, end - mid
    return Pair(ta / 1e9, tb / 1e9)


def p50_seconds(call: Callable[[], object], iterations: int = 10) -> float:
    call()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))
