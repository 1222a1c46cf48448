"""Per-model counters and latency percentiles, plus process figures, for heartbeats.

Counters are per served model version: they restart from zero when the version serving a
model changes. The flusher thread writes prediction counts (it sees every logged
prediction), ``Daemon.feedback`` label verdicts, the shadow worker its comparisons;
readers (the heartbeat, ``GET /v1/health``) take a snapshot under the same short lock.
Latencies are kept in a small ring of the most recent values (``reservoir_size``), so
p50/p95 describe the recent behaviour and memory stays constant.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_RESERVOIR = 1024


@dataclass
class _ShadowCounters:
    version: str
    compared: int = 0
    agreed: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=DEFAULT_RESERVOIR))


@dataclass
class _ModelCounters:
    version: str | None = None
    predictions: int = 0
    errors: int = 0
    sampled: int = 0
    labeled: int = 0
    correct: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=DEFAULT_RESERVOIR))
    shadow: _ShadowCounters | None = None


ServedVersion = Callable[[str], "str | None"]


def _percentiles(latencies_s: deque[float]) -> dict[str, float | None]:
    lat = np.fromiter(latencies_s, float)
    if not lat.size:
        return {"p50": None, "p95": None}
    p50, p95 = (float(v) * 1000.0 for v in np.percentile(lat, [50, 95]))
    return {"p50": round(p50, 4), "p95": round(p95, 4)}


class DaemonStats:
    """Counters of the daemon; ``snapshot()`` is the heartbeat's ``stats`` body.

    Counters are per served version: ``served(model)`` says which version serves now
    (the daemon's live model); when it changes (an over-the-air swap) every counter of
    the model starts again from zero, and predictions or feedback of other versions (in
    flight during the swap) are not counted. Without ``served`` the version of the
    latest recorded batch is taken as the served one.
    """

    def __init__(self, models: list[str], reservoir_size: int = DEFAULT_RESERVOIR, *,
                 served: ServedVersion | None = None) -> None:
        self._lock = threading.Lock()
        self._reservoir = reservoir_size
        self._served = served
        self._models = {
            name: _ModelCounters(latencies_s=deque(maxlen=reservoir_size)) for name in models
        }
        self._started = time.monotonic()
        self._cpu_last = (time.monotonic(), _cpu_seconds())
        self.dropped_ring = 0  # set by the prediction log
        self.dropped_publish = 0

    def _current(self, model: str, seen: str | None = None) -> _ModelCounters:
        """The counters of ``model``'s served version (reset if it changed). Under lock."""
        c = self._models[model]
        served = None if self._served is None else self._served(model)
        version = served if served is not None else (seen or c.version)
        if version != c.version:
            shadow = c.shadow
            c = self._models[model] = _ModelCounters(
                version=version, latencies_s=deque(maxlen=self._reservoir))
            if shadow is not None:  # comparisons were against the previous version
                c.shadow = self._new_shadow(shadow.version)
        return c

    def _new_shadow(self, version: str) -> _ShadowCounters:
        return _ShadowCounters(version, latencies_s=deque(maxlen=self._reservoir))

    def record(self, model: str, version: str, latencies_s: list[float], errors: int,
               sampled: int) -> None:
        """Add a batch of predictions ``version`` of ``model`` made (called by the flusher).

        Ignored unless ``version`` is the one serving now.
        """
        with self._lock:
            c = self._current(model, version)
            if version != c.version:
                return
            c.predictions += len(latencies_s)
            c.errors += errors
            c.sampled += sampled
            c.latencies_s.extend(latencies_s)

    def record_feedback(self, model: str, version: str, correct: bool | None,
                        previous: bool | None = None) -> None:
        """A label came back for a prediction of ``version``: was it right (None: cannot
        tell)? ``previous`` is the verdict of an earlier label of the same prediction
        (relabelling replaces it). Only decidable labels of the serving version count."""
        with self._lock:
            c = self._current(model)
            if version != c.version:
                return
            if previous is not None:
                c.labeled -= 1
                c.correct -= int(previous)
            if correct is not None:
                c.labeled += 1
                c.correct += int(correct)

    def set_shadow(self, model: str, version: str | None) -> None:
        """Start (new counters) or stop (``None``) reporting a shadow candidate of ``model``."""
        with self._lock:
            c = self._current(model)
            c.shadow = None if version is None else self._new_shadow(version)

    def record_shadow(self, model: str, active_version: str, shadow_version: str, *,
                      compared: int = 0, agreed: int = 0, latencies_s: Iterable[float] = ()
                      ) -> None:
        """Add shadow comparisons of ``shadow_version`` against ``active_version``."""
        with self._lock:
            c = self._current(model)
            s = c.shadow
            if s is None or s.version != shadow_version or c.version != active_version:
                return
            s.compared += compared
            s.agreed += agreed
            s.latencies_s.extend(latencies_s)

    def predictions(self, model: str) -> int:
        with self._lock:
            return self._current(model).predictions

    def models(self) -> dict[str, dict[str, Any]]:
        """Per model, since its served version started serving: version, predictions,
        errors, sampled, latency_ms {p50, p95} (None if no data), feedback {labeled,
        correct}, and shadow {version, compared, agreed, latency_ms} when a shadow
        candidate runs."""
        with self._lock:
            copies = {}
            for name in self._models:
                c = self._current(name)
                s = c.shadow
                copies[name] = (c.version, c.predictions, c.errors, c.sampled, c.labeled,
                                c.correct, deque(c.latencies_s),
                                None if s is None else (s.version, s.compared, s.agreed,
                                                        deque(s.latencies_s)))
        out: dict[str, dict[str, Any]] = {}
        for name, (version, n, errors, sampled, labeled, correct, lat, shadow) in \
                copies.items():
            out[name] = {"version": version, "predictions": n, "errors": errors,
                         "sampled": sampled, "latency_ms": _percentiles(lat),
                         "feedback": {"labeled": labeled, "correct": correct}}
            if shadow is not None:
                out[name]["shadow"] = {"version": shadow[0], "compared": shadow[1],
                                       "agreed": shadow[2],
                                       "latency_ms": _percentiles(shadow[3])}
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
