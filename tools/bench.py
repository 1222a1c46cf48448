"""Latency and throughput of a model under the agent runtime.

``bench_model(path, options, progress=None) -> BenchResult`` loads the model with
``load_model``, makes random inputs that fit its signature (a dynamic leading dimension
becomes ``options.batch``, any other dynamic dimension 1), runs ``warmup`` untimed calls
and then a fixed number of timed ``runner.predict`` calls (or as many as fit in
``duration_s``). Each call is timed on its own with ``time.perf_counter_ns``, so the
percentiles are per-call latencies; throughput is samples per second over the timed loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.runtime import Framework, RunnerOptions, Signature, load_model
from edgefleet.tools.errors import ToolInputError

log = logging.getLogger(__name__)

Progress = Callable[[float], None]
"""Called with the fraction of the timed phase done, in [0, 1], about 100 times."""


@dataclass(frozen=True)
class BenchOptions:
    """How to benchmark.

    Attributes:
        iterations: timed calls (ignored when ``duration_s`` is set).
        duration_s: run timed calls for this many seconds instead of a fixed count.
        warmup: untimed calls before timing (lets the runtime allocate and settle).
        batch: size of a dynamic leading (batch) dimension.
        threads: intra-op threads for the runtime; None lets it decide.
        seed: seed of the random inputs.
    """

    iterations: int = 200
    duration_s: float | None = None
    warmup: int = 20
    batch: int = 1
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ToolInputError(f"iterations must be at least 1, got {self.iterations}")
        if self.warmup < 0:
            raise ToolInputError(f"warmup must be 0 or more, got {self.warmup}")
        if self.batch < 1:
            raise ToolInputError(f"batch must be at least 1, got {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise ToolInputError(f"threads must be at least 1, got {self.threads}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ToolInputError(f"duration must be positive, got {self.duration_s}")


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency percentiles, in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray) -> LatencyStats:
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return cls(float(p50), float(p95), float(p99), float(ms.mean()),
                   float(ms.min()), float(ms.max()))


@dataclass(frozen=True)
class BenchResult:
    """What ``edgefleet model bench`` reports."""

    path: Path
    framework: Framework
    batch: int
    threads: int | None
    warmup: int
    iterations: int
    input_shapes: dict[str, tuple[int, ...]]
    latency: LatencyStats
    total_s: float
    throughput_per_s: float  # samples per second (calls per second × batch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "framework": self.framework.value,
            "batch": self.batch,
            "threads": self.threads,
            "warmup": self.warmup,
            "iterations": self.iterations,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            **asdict(self.latency),
            "total_s": self.total_s,
            "throughput_per_s": self.throughput_per_s,
        }

    def to_text(self) -> str:
        lat = self.latency
        shapes = ", ".join(f"{k} {list(v)}" for k, v in self.input_shapes.items())
        return "\n".join([
            f"model:      {self.path} ({self.framework.value})",
            f"inputs:     {shapes}",
            f"runs:       {self.iterations} timed after {self.warmup} warm-up, "
            f"threads {self.threads if self.threads is not None else 'default'}",
            f"latency:    p50 {lat.p50_ms:.4f} ms, p95 {lat.p95_ms:.4f} ms, "
            f"p99 {lat.p99_ms:.4f} ms (mean {lat.mean_ms:.4f}, min {lat.min_ms:.4f}, "
            f"max {lat.max_ms:.4f})",
            f"throughput: {self.throughput_per_s:.1f} samples/s",
        ])


def random_inputs(signature: Signature, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs that fit ``signature``; dynamic leading dim = ``batch``, others 1.

    Float inputs are uniform in [-1, 1); quantized inputs are real values inside the
    range their integer type can represent; integer inputs are 0 or 1 (valid indices
    for any embedding); booleans are random.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(
            d if isinstance(d, int) else (batch if axis == 0 else 1)
            for axis, d in enumerate(spec.shape)
        )
        kind = spec.dtype.kind
        q = spec.quantization
        if q is not None:
            info = np.iinfo(spec.dtype)
            lo = (info.min - q.zero_points[0]) * q.scales[0]
            hi = (info.max - q.zero_points[0]) * q.scales[0]
            out[spec.name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
        elif kind == "f":
            out[spec.name] = rng.uniform(-1.0, 1.0, size=shape).astype(spec.dtype)
        elif kind in "iu":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        elif kind == "b":
            out[spec.name] = rng.random(size=shape) < 0.5
        else:
            raise ToolInputError(f"input {spec.name!r}: cannot make random {spec.dtype} data")
    return out


def bench_model(
    path: str | Path, options: BenchOptions | None = None, progress: Progress | None = None
) -> BenchResult:
    """Benchmark ``runner.predict`` on ``path``.

    Raises:
        ModelLoadError: the model cannot be loaded.
        ToolInputError: an input type random data cannot be made for.
        InputError, InferenceError: the model refuses the generated inputs or fails.
    """
    options = options or BenchOptions()
    runner_options = RunnerOptions(intra_op_threads=options.threads)
    with load_model(path, runner_options) as runner:
        inputs = random_inputs(runner.signature, options.batch, options.seed)
        predict = runner.predict
        for _ in range(options.warmup):
            predict(inputs)
        samples = _timed_loop(lambda: predict(inputs), options, progress)
        total_s = float(samples.sum()) / 1e9
        result = BenchResult(
            path=runner.path,
            framework=runner.framework,
            batch=options.batch,
            threads=options.threads,
            warmup=options.warmup,
            iterations=len(samples),
            input_shapes={k: tuple(v.shape) for k, v in inputs.items()},
            latency=LatencyStats.from_ns(samples),
            total_s=total_s,
            throughput_per_s=len(samples) * options.batch / total_s if total_s > 0 else 0.0,
        )
    log.info("bench %s: p50 %.4f ms", path, result.latency.p50_ms)
    return result


def _timed_loop(call: Callable[[], object], options: BenchOptions,
                progress: Progress | None) -> np.ndarray:
    clock = time.perf_counter_ns
    if options.duration_s is None:
        n = options.iterations
        samples = np.empty(n, dtype=np.int64)
        step = max(1, n // 100)
        for i in range(n):
            start = clock()
            call()
            samples[i] = clock() - start
            if progress is not None and (i + 1) % step == 0:
                progress((i + 1) / n)
        if progress is not None:
            progress(1.0)
        return samples
    budget_ns = int(options.duration_s * 1e9)
    collected: list[int] = []
    begin = clock()
    next_report = 0.01
    while True:
        start = clock()
        call()
        end = clock()
        collected.append(end - start)
        done = (end - begin) / budget_ns
        if progress is not None and done >= next_report:
            progress(min(done, 1.0))
            next_report = done + 0.01
        if done >= 1.0:
            break
    if progress is not None:
        progress(1.0)
    return np.asarray(collected, dtype=np.int64)
