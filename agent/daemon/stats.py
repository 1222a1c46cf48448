"""Per-model counters and latency percentiles, plus process figures, for heartbeats.

Only the flusher thread writes (it sees every logged prediction); readers (the heartbeat,
``GET /v1/health``) take a snapshot under the same short lock. Latencies are kept in a
small ring of the most recent values (``reservoir_size``), so p50/p95 describe the
recent behaviour and memory stays constant.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_RESERVOIR = 1024


@dataclass
class _ModelCounters:
    predictions: int = 0
    errors: int = 0
    sampled: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=DEFAULT_RESERVOIR))


class DaemonStats:
    """Counters of the daemon; ``snapshot()`` is the heartbeat's ``stats`` body."""

    def __init__(self, models: list[str], reservoir_size: int = DEFAULT_RESERVOIR) -> None:
        self._lock = threading.Lock()
        self._models = {
            name: _ModelCounters(latencies_s=deque(maxlen=reservoir_size)) for name in models
        }
        self._started = time.monotonic()
        self._cpu_last = (time.monotonic(), _cpu_seconds())
        self.dropped_ring = 0  # set by the prediction log
        self.dropped_publish = 0

    def record(self, model: str, latencies_s: list[float], errors: int, sampled: int) -> None:
        """Add a batch of predictions of ``model`` (called by the flusher)."""
        with self._lock:
            c = self._models[model]
            c.predictions += len(latencies_s)
            c.errors += errors
            c.sampled += sampled
            c.latencies_s.extend(latencies_s)

    def predictions(self, model: str) -> int:
        with self._lock:
            return self._models[model].predictions

    def models(self) -> dict[str, dict[str, Any]]:
        """Per model: predictions, errors, sampled, latency_ms {p50, p95} (None if no data)."""
        with self._lock:
            copies = {n: (c.predictions, c.errors, c.sampled, np.fromiter(c.latencies_s, float))
                      for n, c in self._models.items()}
        out: dict[str, dict[str, Any]] = {}
        for name, (n, errors, sampled, lat) in copies.items():
            if lat.size:
                p50, p95 = (float(v) * 1000.0 for v in np.percentile(lat, [50, 95]))
                latency: dict[str, float | None] = {"p50": round(p50, 4), "p95": round(p95, 4)}
            else:
                latency = {"p50": None, "p95": None}
            out[name] = {"predictions": n, "errors": errors, "sampled": sampled,
                         "latency_ms": latency}
        return out

    def process(self) -> dict[str, Any]:
        """RSS (bytes), CPU percent since the previous call, uptime."""
        now, cpu = time.monotonic(), _cpu_seconds()
        with self._lock:
            last_t, last_cpu = self._cpu_last
            self._cpu_last = (now, cpu)
        elapsed = now - last_t
        percent = 100.0 * (cpu - last_cpu) / elapsed if elapsed > 0 else 0.0
        return {"rss_bytes": rss_bytes(), "cpu_percent": round(percent, 2),
                "uptime_s": round(now - self._started, 3)}

    def snapshot(self) -> dict[str, Any]:
        """What the heartbeat carries beside the telemetry client's own figures."""
        return {"models": self.models(),
                "predlog": {"dropped": self.dropped_ring,
                            "publish_failed": self.dropped_publish}}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
