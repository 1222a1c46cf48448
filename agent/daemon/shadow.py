"""Shadow mode: a candidate model runs on a sampled share of real inputs, never served.

The flusher thread (not the request path) offers every successful prediction of the
shadowed model to :meth:`ShadowWorker.offer`, which keeps a ``sample_rate`` share of them
in a bounded queue (full: the input is dropped and counted). One background thread runs
the candidate on each queued input and compares its outputs with what the active model
answered (:func:`outputs_agree`); :class:`~edgefleet.agent.daemon.stats.DaemonStats`
keeps ``compared``/``agreed`` and the candidate's latencies for the heartbeat.

Only the active model's outputs are ever returned to a caller; the candidate's are
compared and thrown away. A candidate call that fails counts as compared, not agreed.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgefleet.agent.daemon.feedback import predicted_labels
from edgefleet.agent.daemon.stats import DaemonStats

log = logging.getLogger(__name__)


class ShadowRunner(Protocol):
    def predict(self, inputs: Any) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class ShadowSettings:
    """Tuning of shadow mode.

    Attributes:
        queue_size: sampled inputs waiting for the candidate; beyond: dropped, counted.
        rtol, atol: tolerance of "the same outputs" for models that are not classifiers
            (``numpy.allclose``).
    """

    queue_size: int = 256
    rtol: float = 1e-3
    atol: float = 1e-5


def outputs_agree(active: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray],
                  confidence_output: str | None = None, *, rtol: float = 1e-3,
                  atol: float = 1e-5) -> bool:
    """Do two models agree on one prediction (every row)? Pure.

    Classifiers (see :func:`~edgefleet.agent.daemon.feedback.predicted_labels`): the same
    predicted class on every row. Otherwise: the same output names and shapes, and every
    value within the tolerance (non-numeric outputs must be equal).
    """
    expected = predicted_labels(active, confidence_output)
    if expected is not None:
        return predicted_labels(shadow, confidence_output) == expected
    if set(active) != set(shadow):
        return False
    for name, value in active.items():
        a, b = np.asarray(value), np.asarray(shadow[name])
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "fciub" and b.dtype.kind in "fciub":
            if not np.allclose(a, b, rtol=rtol, atol=atol):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


_STOP = object()


class ShadowWorker:
    """Runs one shadow candidate of ``model`` on a thread of its own.

    Args:
        model: the daemon's model name the candidate shadows.
        version: what the candidate is reported as (the bundle key).
        runner: the loaded candidate; the worker uses it but never closes it.
        sample_rate: share of the active model's successful predictions re-run.
        stats: where comparisons are counted.
        confidence_output: the model's probability output (decides the class).
    """

    def __init__(self, model: str, version: str, runner: ShadowRunner, *,
                 sample_rate: float, stats: DaemonStats, confidence_output: str | None = None,
                 settings: ShadowSettings | None = None,
                 rng: random.Random | None = None) -> None:
        self.model = model
        self.version = version
        self.runner = runner
        self.sample_rate = sample_rate
        self.stats = stats
        self.confidence_output = confidence_output
        self.settings = settings or ShadowSettings()
        self._rng = rng or random.Random()  # noqa: S311 (sampling, not security)
        self._queue: queue.Queue[Any] = queue.Queue(self.settings.queue_size)
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.failed = 0

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"edgefleet-shadow-{self.model}",
                                        daemon=True)
        self._thread.start()

    def offer(self, active_version: str,
              pairs: list[tuple[Any, dict[str, np.ndarray]]]) -> None:
        """Sample ``(inputs, active outputs)`` pairs into the queue (flusher thread)."""
        rate, draw, put = self.sample_rate, self._rng.random, self._queue.put_nowait
        for inputs, outputs in pairs:
            if rate >= 1.0 or draw() < rate:
                try:
                    put((active_version, inputs, outputs))
                except queue.Full:
                    self.dropped += 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (queued inputs are discarded); the runner is not closed."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:  # pragma: no cover - only if offer() races close() forever
            log.warning("shadow queue of %s did not drain", self.model)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        settings = self.settings
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            active_version, inputs, expected = item
            t0 = time.perf_counter()
            try:
                got = self.runner.predict(inputs)
                elapsed = time.perf_counter() - t0
                agreed = outputs_agree(expected, got, self.confidence_output,
                                       rtol=settings.rtol, atol=settings.atol)
            except Exception as e:  # a failing candidate disagrees; keep going
                self.failed += 1
                log.debug("shadow %s of %s failed: %s", self.version, self.model, e)
                self.stats.record_shadow(self.model, active_version, self.version,
                                         compared=1, agreed=0)
                continue
            self.stats.record_shadow(self.model, active_version, self.version, compared=1,
                                     agreed=int(agreed), latencies_s=(elapsed,))
