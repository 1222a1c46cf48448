"""Prediction logging: O(1) on the hot path, everything else on one flusher thread.

``PredictionLog.log(...)`` appends one tuple to a bounded ring (a ``deque``); when the
ring is full the prediction is not logged and ``dropped`` counts it. The flusher thread
wakes every ``flush_interval_s``, drains the ring and, per model, in batches:

* decides which predictions are sent to the fleet: a fraction ``sample_rate`` at random,
  plus always errors and low-confidence predictions (max probability below the model's
  ``low_confidence``); inputs are kept, replaced by their sha256, or left out;
* publishes them as ``predictions`` messages of many records each
  (``{"model", "version", "records": [...]}``), split to stay under the payload limit;
* feeds the drift summarizer (vectorized) and closes a drift window every ``window_s``;
* stores successful predictions in the feedback store and updates the counters;
* hands successful predictions to the shadow feed (which samples them for a shadow
  candidate, see :mod:`.shadow`), so shadow mode costs the request path nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.daemon.config import InputPolicy
from edgefleet.agent.daemon.errors import DaemonError
from edgefleet.agent.daemon.feedback import FeedbackStore
from edgefleet.agent.daemon.stats import DaemonStats
from edgefleet.agent.daemon.summarize import DriftSummarizer, drift_event
from edgefleet.agent.telemetry.envelope import Channel

log = logging.getLogger(__name__)

Publisher = Callable[[Channel, Mapping[str, Any]], int]
# (model, version, [(inputs, outputs)]) of successful predictions, on the flusher thread
ShadowFeed = Callable[[str, str, "list[tuple[Any, dict[str, np.ndarray]]]"], None]
# (model, version, ts, latency_s, id, inputs, outputs or None, error text or None)
Entry = tuple[str, str, float, float, str, Any, "dict[str, np.ndarray] | None", "str | None"]

MAX_MESSAGE_BODY_BYTES = 200_000  # under the envelope's 256 KiB with room to spare
MAX_ERROR_INPUT_BYTES = 16_384


class Reason:
    SAMPLE = "sample"
    ERROR = "error"
    LOW_CONFIDENCE = "low_confidence"


@dataclass(frozen=True)
class LogPolicy:
    """How one model's predictions are sampled and what their records carry."""

    sample_rate: float = 0.01
    low_confidence: float | None = None
    confidence_output: str | None = None
    inputs: InputPolicy = InputPolicy.KEEP


class PredictionLog:
    """The ring, the flusher thread and the batching of records into messages."""

    def __init__(
        self,
        policies: Mapping[str, LogPolicy],
        stats: DaemonStats,
        *,
        publish: Publisher | None = None,
        summarizer: DriftSummarizer | None = None,
        store: FeedbackStore | None = None,
        shadow: ShadowFeed | None = None,
        ring_size: int = 65_536,
        flush_interval_s: float = 0.25,
        window_s: float = 60.0,
        max_records_per_message: int = 500,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policies = dict(policies)
        self.stats = stats
        self.publish = publish
        self.summarizer = summarizer
        self.store = store
        self.shadow = shadow
        self.ring_size = ring_size
        self.flush_interval_s = flush_interval_s
        self.window_s = window_s
        self.max_records_per_message = max_records_per_message
        self._rng = rng or random.Random()  # noqa: S311 (sampling, not security)
        self._clock = clock
        self._ring: deque[Entry] = deque()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window_start = clock()
        self.dropped = 0
        self.messages = 0

    # -- hot path ----------------------------------------------------------------------

    def log(self, model: str, version: str, latency_s: float, pid: str,  # noqa: PLR0917
            inputs: Any, outputs: dict[str, np.ndarray] | None, error: str | None = None
            ) -> None:
        # positional on purpose: keyword passing costs measurably on the hot path
        """Queue one prediction (O(1)); counts it as dropped when the ring is full."""
        ring = self._ring
        if len(ring) >= self.ring_size:
            self.dropped += 1
            self.stats.dropped_ring = self.dropped
            return
        ring.append((model, version, self._clock(), latency_s, pid, inputs, outputs, error))

    @property
    def queued(self) -> int:
        """Predictions waiting for the flusher."""
        return len(self._ring)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise DaemonError("prediction log already started")
        self._window_start = self._clock()
        self._thread = threading.Thread(target=self._run, name="edgefleet-predlog",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the flusher, then flush what is queued and close the current drift window."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()
        self.close_window()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
                if self._clock() - self._window_start >= self.window_s:
                    self.close_window()
            except Exception:  # the flusher must survive anything; the next round retries
                log.exception("prediction log flush failed")

    # -- flushing ----------------------------------------------------------------------

    def flush(self) -> int:
        """Drain the ring now (any thread); return how many predictions were processed."""
        with self._flush_lock:
            ring = self._ring
            n = len(ring)
            if n == 0:
                return 0
            groups: dict[tuple[str, str], list[Entry]] = {}
            for _ in range(n):
                e = ring.popleft()
                key = (e[0], e[1])
                group = groups.get(key)
                if group is None:
                    groups[key] = [e]
                else:
                    group.append(e)
            for (model, version), entries in groups.items():
                self._process(model, version, entries)
            return n

    def close_window(self) -> None:
        """Close the drift window of every (model, version) and publish the summaries."""
        with self._flush_lock:
            start, end = self._window_start, self._clock()
            self._window_start = end
            if self.summarizer is None:
                return
            for window in self.summarizer.finish(start, end):
                self._send(Channel.DRIFT, {"model": window.model, "version": window.version,
                                           "summary": window.summary.to_dict()})
                event = drift_event(window)
                if event is not None:
                    self._send(Channel.EVENTS, event)

    def _process(self, model: str, version: str, entries: list[Entry]) -> None:
        policy = self.policies[model]
        ok = [(e[4], e[2], e[5], out) for e in entries if e[7] is None
              for out in (e[6],) if out is not None]
        errors = len(entries) - len(ok)
        records = self._sample(policy, entries)
        self.stats.record(model, version, [e[3] for e in entries], errors, len(records))
        if ok and self.summarizer is not None:
            self.summarizer.add(model, version, [o[2] for o in ok], [o[3] for o in ok])
        if ok and self.store is not None:
            try:
                self.store.add_many((pid, model, version, ts, inputs, outputs)
                                    for pid, ts, inputs, outputs in ok)
            except DaemonError as exc:
                log.warning("feedback store: %s", exc)
        if ok and self.shadow is not None:
            try:
                self.shadow(model, version, [(o[2], o[3]) for o in ok])
            except Exception:  # shadow mode must never disturb logging
                log.exception("shadow feed of %s failed", model)
        for body in self._messages(model, version, records):
            self._send(Channel.PREDICTIONS, body)

    def _sample(self, policy: LogPolicy, entries: list[Entry]) -> list[dict[str, Any]]:
        rate = policy.sample_rate
        draws = self._rng.random
        records = []
        for e in entries:
            if e[7] is not None:
                reason = Reason.ERROR
            elif policy.low_confidence is not None and _low_confidence(
                    e[6], policy.confidence_output, policy.low_confidence):
                reason = Reason.LOW_CONFIDENCE
            elif rate > 0.0 and draws() < rate:
                reason = Reason.SAMPLE
            else:
                continue
            records.append(_record(e, reason, policy.inputs))
        return records

    def _messages(self, model: str, version: str,
                  records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        bodies: list[dict[str, Any]] = []
        chunk: list[dict[str, Any]] = []
        size = 0
        for record in records:
            r = record
            n = len(json.dumps(r, separators=(",", ":"), allow_nan=False))
            if n > MAX_MESSAGE_BODY_BYTES - 1024:
                r = _shrink(r)
                n = len(json.dumps(r, separators=(",", ":")))
            if chunk and (size + n > MAX_MESSAGE_BODY_BYTES - 1024
                          or len(chunk) >= self.max_records_per_message):
                bodies.append({"model": model, "version": version, "records": chunk})
                chunk, size = [], 0
            chunk.append(r)
            size += n + 1
        if chunk:
            bodies.append({"model": model, "version": version, "records": chunk})
        return bodies

    def _send(self, channel: Channel, body: Mapping[str, Any]) -> None:
        if self.publish is None:
            return
        try:
            self.publish(channel, body)
            self.messages += 1
        except Exception as e:  # EnvelopeError/OutboxError: count, log, keep serving
            self.stats.dropped_publish += 1
            log.warning("cannot publish a %s message: %s", channel.value, e)


def _low_confidence(outputs: dict[str, np.ndarray] | None, name: str | None,
                    threshold: float) -> bool:
    if outputs is None or name is None:
        return False
    probs = outputs.get(name)
    if probs is None or probs.ndim == 0:
        return False
    top = probs.max(axis=-1) if probs.ndim >= 1 else probs
    return bool(np.min(top) < threshold)


def _json_value(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def hash_inputs(inputs: Any) -> str:
    """sha256 over each input (sorted by name): name, dtype, shape and raw bytes.

    Inputs that are not arrays (a request that failed validation) are hashed as JSON.
    """
    h = hashlib.sha256()
    if isinstance(inputs, Mapping) and all(isinstance(v, np.ndarray) for v in inputs.values()):
        for name in sorted(inputs):
            a = np.ascontiguousarray(inputs[name])
            h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
            h.update(a.tobytes())
    else:
        try:
            text = json.dumps(inputs, sort_keys=True, default=_json_value)
        except (TypeError, ValueError):
            text = repr(inputs)
        h.update(text.encode("utf-8", "replace"))
    return h.hexdigest()


def _record(e: Entry, reason: str, policy: InputPolicy) -> dict[str, Any]:
    _, _, ts, latency_s, pid, inputs, outputs, error = e
    record: dict[str, Any] = {"id": pid, "ts": round(ts, 6),
                              "latency_ms": round(latency_s * 1000.0, 4), "reason": reason}
    if policy is InputPolicy.HASH:
        record["inputs_sha256"] = hash_inputs(inputs)
    elif policy is InputPolicy.KEEP:
        if isinstance(inputs, Mapping):
            record["inputs"] = {str(k): _json_value(v) for k, v in inputs.items()}
        else:
            record["inputs"] = _json_value(inputs)
        if error is not None:  # unvalidated input: keep it only when small and JSON
            try:
                small = len(json.dumps(record["inputs"], allow_nan=False)) <= \
                    MAX_ERROR_INPUT_BYTES
            except (TypeError, ValueError):
                small = False
            if not small:
                del record["inputs"]
                record["inputs_sha256"] = hash_inputs(inputs)
    if error is not None:
        record["error"] = error[:1000]
    elif outputs is not None:
        record["outputs"] = {k: _finite(v) for k, v in outputs.items()}
    return record


def _finite(a: np.ndarray) -> Any:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        obj = a.astype(object)
        obj[~np.isfinite(a)] = None  # JSON has no NaN/inf
        return obj.tolist()
    return a.tolist()


def _shrink(record: dict[str, Any]) -> dict[str, Any]:
    """A record too big for one message keeps its hash and metadata only."""
    r = dict(record)
    if "inputs" in r:
        r["inputs_sha256"] = hash_inputs(r.pop("inputs"))
    r.pop("outputs", None)
    r["truncated"] = True
    return r
