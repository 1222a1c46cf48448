"""How much work a benchmark run does."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Iteration counts and runtime threads (1 by default: steadier on a 2-core box).

    Attributes:
        threads: intra-op threads for every runtime, raw and runner alike.
        tiny_iterations: interleaved calls per side on the tiny models.
        heavy_iterations: interleaved calls per side on the ≥ 1 ms models.
        int8_iterations: interleaved calls per side for float vs int8 latency.
        int8_batches: batch sizes for float vs int8 latency (1: one request at a
            time, as on a device; 16: a batch where the matrix products dominate).
    """

    threads: int = 1
    tiny_iterations: int = 5000
    heavy_iterations: int = 200
    int8_iterations: int = 500
    int8_batches: tuple[int, ...] = (1, 16)

    @classmethod
    def quick(cls, threads: int = 1) -> Settings:
        return cls(threads=threads, tiny_iterations=300, heavy_iterations=10,
                   int8_iterations=20)
