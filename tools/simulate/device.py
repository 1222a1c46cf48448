"""One simulated device's behaviour (pure: no sockets, no clock; ``now`` is passed in).

A :class:`SimDevice` says what a real agent would publish, as ready MQTT payloads built
with the agent's own envelope code (:func:`edgefleet.agent.telemetry.envelope.encode_raw`):

* on every connect (``begin_connection`` then ``connected``): ``bd`` + 1, a last will
  ``status offline`` (retained), ``birth`` (inventory with ``{model: version}``) and a
  retained ``status online``;
* every ``heartbeat_s``: a ``heartbeat`` shaped like the daemon's (process figures,
  outbox, inbound, and per model ``predictions``, ``errors``, ``sampled``,
  ``latency_ms {p50, p95}``, the served ``version`` and ``feedback {labeled, correct}``;
  the counters are those of the served version, reset when the device switches);
* every ``window_s``: a ``drift`` window of the served version (a real
  :class:`~edgefleet.agent.drift.WindowSummary` from :class:`.windows.WindowSource`);
* on a ``desired`` hint naming another version of its model: ``events`` walking the
  update machine's states (``agent/update/state.py``) idle → checking → downloading →
  verifying → staging → warming → switching → committed over ``install_delay_s``, then it
  serves the new version. A version marked ``fail_install`` fails at warm-up instead:
  warming → rolling_back (with the error) → idle, and the device keeps its version.

Faults per version (:class:`VersionFaults`) make a bad release visible to the rollout
gates: shifted outputs in drift windows, a latency factor, a failing install.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.agent.telemetry.envelope import (
    Channel,
    Status,
    decode,
    encode_body,
    encode_raw,
    topic,
)
from edgefleet.agent.telemetry.errors import EnvelopeError
from edgefleet.agent.update.state import UpdateState
from edgefleet.tools.simulate.windows import WindowSource

log = logging.getLogger(__name__)

AGENT_VERSION = "edgefleet-simulate"
RUNTIMES = {"onnxruntime": "simulated"}
HARDWARE = {"system": "Linux", "machine": "simulated", "cpu_count": 4,
            "memory_bytes": 1 << 30}

S = UpdateState
#: The successful walk of the update machine, one transition per step.
INSTALL_WALK: tuple[tuple[UpdateState, UpdateState], ...] = (
    (S.IDLE, S.CHECKING), (S.CHECKING, S.DOWNLOADING), (S.DOWNLOADING, S.VERIFYING),
    (S.VERIFYING, S.STAGING), (S.STAGING, S.WARMING), (S.WARMING, S.SWITCHING),
    (S.SWITCHING, S.COMMITTED))
#: A warm-up failure: the first five steps, then the failure and the rollback.
FAIL_WALK: tuple[tuple[UpdateState, UpdateState], ...] = (
    *INSTALL_WALK[:5], (S.WARMING, S.ROLLING_BACK), (S.ROLLING_BACK, S.IDLE))
WARMUP_ERROR = "warm-up failed: smoke test did not pass (simulated fault)"


@dataclass(frozen=True)
class VersionFaults:
    """What is wrong with one model version on the simulated devices.

    Attributes:
        output_shift: outputs in drift windows are shifted by this many reference
            standard deviations (0: same distribution as the reference).
        latency_factor: heartbeat latency percentiles are multiplied by it.
        fail_install: the install fails at warm-up and the device rolls back.
    """

    output_shift: float = 0.0
    latency_factor: float = 1.0
    fail_install: bool = False


@dataclass(frozen=True)
class DeviceConfig:
    """Behaviour shared by every simulated device (times in seconds).

    Attributes:
        model, version: the model served and its version at start.
        heartbeat_s, window_s: heartbeat and drift window periods.
        install_delay_s: from the desired hint to ``committed`` (or the rollback).
        predictions_per_s: simulated prediction rate (counters, window sizes).
        latency_p50_ms, latency_p95_ms: latency reported for a version without faults.
        labeled_share: share of predictions that get a feedback label.
        accuracy: share of labeled predictions that were right.
        faults: per version.
        qos: QoS of every publish (the agent uses 1).
    """

    model: str
    version: str
    heartbeat_s: float = 30.0
    window_s: float = 60.0
    install_delay_s: float = 1.0
    predictions_per_s: float = 2.0
    latency_p50_ms: float = 4.0
    latency_p95_ms: float = 9.0
    labeled_share: float = 0.1
    accuracy: float = 0.9
    faults: Mapping[str, VersionFaults] = field(default_factory=dict)
    qos: int = 1

    def fault(self, version: str) -> VersionFaults:
        return self.faults.get(version, _NO_FAULTS)


_NO_FAULTS = VersionFaults()


@dataclass(frozen=True)
class Message:
    """One MQTT publish a device wants sent."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class _Counters:
    since: float
    predictions: float = 0.0


@dataclass
class _Install:
    version: str
    bundle: str | None
    walk: tuple[tuple[UpdateState, UpdateState], ...]
    steps: deque[float]  # due times, one per walk step
    done: int = 0


class SimDevice:
    """The behaviour of one device; :class:`.fleet.Fleet` moves its bytes.

    Args:
        device_id: also the MQTT client id and username.
        config: shared behaviour.
        windows: shared source of drift window summaries.
        index: spreads the devices' timers and window variants.
        started: unix time the device "booted" (its first heartbeat and window are
            spread over one period after it, so 10,000 devices do not fire at once).
        bd, seq: the counters' values before the first connect and message. The agent
            keeps both monotonic across restarts (the server drops a ``seq`` it has seen
            as a duplicate); a simulator has no disk, so :class:`.fleet.Fleet` starts
            them from the clock (seconds for ``bd``, milliseconds for ``seq``) and a
            second run against the same server is not mistaken for replays.
    """

    def __init__(self, device_id: str, config: DeviceConfig, windows: WindowSource | None,
                 *, index: int = 0, started: float = 0.0, bd: int = 0, seq: int = 0) -> None:
        self.device_id = device_id
        self.config = config
        self.windows = windows
        self.index = index
        self.version = config.version
        self.bd = bd
        self.seq = seq
        self.started = started
        self.install: _Install | None = None
        self.failed: set[str] = set()  # versions whose install failed (not retried)
        self.installs = 0
        self.failures = 0
        self._counters = _Counters(since=started)
        self._errors = 0
        self._topics = {c: topic(device_id, c) for c in Channel}
        spread = (index * 0.6180339887) % 1.0  # golden-ratio spread over one period
        self._phase = (index * 0.7548776662) % 1.0  # two more, independent spreads
        self._phase2 = (index * 0.5698402910) % 1.0
        self.next_heartbeat = started + spread * config.heartbeat_s
        self.window_start = started
        self.next_window = started + config.window_s * (0.5 + 0.5 * spread)

    # -- connection -----------------------------------------------------------------------
    def begin_connection(self, now: float) -> Message:
        """A new connection starts: ``bd`` + 1; returns the last will (``status offline``)."""
        self.bd += 1
        return self._message(Channel.STATUS, {"state": Status.OFFLINE.value}, now,
                             retain=True)

    def connected(self, now: float) -> list[Message]:
        """CONNACK received: ``birth`` and the retained ``status online``."""
        birth = {"agent_version": AGENT_VERSION, "runtimes": dict(RUNTIMES),
                 "models": {self.config.model: self.version}, "hardware": dict(HARDWARE)}
        return [self._message(Channel.BIRTH, birth, now),
                self._message(Channel.STATUS, {"state": Status.ONLINE.value}, now,
                              retain=True)]

    def offline(self, now: float) -> Message:
        """What a clean stop publishes before DISCONNECT (the will is not sent then)."""
        return self._message(Channel.STATUS, {"state": Status.OFFLINE.value}, now, retain=True)

    @property
    def desired_topic(self) -> str:
        return self._topics[Channel.DESIRED]

    # -- timers ---------------------------------------------------------------------------
    def next_due(self) -> float:
        """The earliest time :meth:`due` has something to publish."""
        due = min(self.next_heartbeat, self.next_window)
        if self.install is not None and self.install.steps:
            due = min(due, self.install.steps[0])
        return due

    def due(self, now: float) -> list[Message]:
        """Everything whose time has come: update events, heartbeat, drift window."""
        out: list[Message] = []
        if self.install is not None:
            out.extend(self._install_steps(now))
        if now >= self.next_heartbeat:
            out.append(self.heartbeat(now))
            while self.next_heartbeat <= now:
                self.next_heartbeat += self.config.heartbeat_s
        if now >= self.next_window:
            message = self.drift_window(now)
            if message is not None:
                out.append(message)
            while self.next_window <= now:
                self.next_window += self.config.window_s
        return out

    # -- telemetry ------------------------------------------------------------------------
    def _accrue(self, now: float) -> float:
        c = self._counters
        c.predictions = max(0.0, now - c.since) * self.config.predictions_per_s
        return c.predictions

    def heartbeat(self, now: float) -> Message:
        cfg = self.config
        n = int(self._accrue(now))
        factor = cfg.fault(self.version).latency_factor
        # floor(x + u) with u spread uniformly over the devices has the mean x: summed over
        # a fleet, labels and correct answers match the configured shares without bias
        # (truncating would make a version that just started look less accurate).
        labeled = math.floor(n * cfg.labeled_share + self._phase)
        model = {
            "predictions": n, "errors": self._errors, "sampled": n // 10,
            "latency_ms": {"p50": round(cfg.latency_p50_ms * factor, 4),
                           "p95": round(cfg.latency_p95_ms * factor, 4)},
            "version": self.version,
            "feedback": {"labeled": labeled,
                         "correct": math.floor(labeled * cfg.accuracy + self._phase2)},
        }
        body = {"uptime_s": round(max(0.0, now - self.started), 3),
                "rss_bytes": 48 << 20, "cpu_percent": 3.0,
                "outbox": {"depth": 0, "bytes": 0, "dropped": 0},
                "inbound": {"rejected": 0, "dropped": 0},
                "models": {cfg.model: model}}
        return self._message(Channel.HEARTBEAT, body, now)

    def drift_window(self, now: float) -> Message | None:
        """The drift window of the served version since the last one (None: no source)."""
        start, self.window_start = self.window_start, now
        if self.windows is None or now <= start:
            return None
        summary = self.windows.summary(self.version, start, now, self.index)
        body_json = ('{"model":' + json.dumps(self.config.model) + ',"version":'
                     + json.dumps(self.version) + ',"summary":' + summary + "}")
        return self._raw(Channel.DRIFT, body_json, now)

    # -- updates --------------------------------------------------------------------------
    def on_desired(self, payload: bytes, now: float) -> bool:
        """Handle a ``desired`` hint; True when it started an install.

        Malformed hints are logged and ignored (a real agent trusts only signed metadata,
        so a bad hint can never do more than nothing).
        """
        if not payload:
            return False  # an empty retained message clears desired
        try:
            body = decode(payload, expected_device=self.device_id,
                          expected_channel=Channel.DESIRED).body
        except EnvelopeError as e:
            log.warning("%s: ignored desired hint: %s", self.device_id, e)
            return False
        version, model = body.get("version"), body.get("model")
        if model != self.config.model or not isinstance(version, str) or not version:
            return False
        if self.install is not None:
            if self.install.version == version:
                return False
        elif version == self.version or version in self.failed:
            return False
        target = body.get("target")
        bundle = target if isinstance(target, str) and target else f"{model}-{version}"
        fail = self.config.fault(version).fail_install
        walk = FAIL_WALK if fail else INSTALL_WALK
        step_s = self.config.install_delay_s / len(walk)
        self.install = _Install(version, bundle, walk,
                                deque(now + step_s * (i + 1) for i in range(len(walk))))
        return True

    def _install_steps(self, now: float) -> list[Message]:
        inst = self.install
        assert inst is not None
        events: list[dict[str, Any]] = []
        while inst.steps and inst.steps[0] <= now:
            inst.steps.popleft()
            frm, to = inst.walk[inst.done]
            inst.done += 1
            error = WARMUP_ERROR if to is S.ROLLING_BACK else None
            events.append({"ts": round(now, 6), "kind": "state", "state": to.value,
                           "from": frm.value, "to": to.value, "bundle": inst.bundle,
                           "error": error})
        out = [self._message(Channel.EVENTS, {"events": events}, now)] if events else []
        if not inst.steps:
            self.install = None
            if inst.walk is FAIL_WALK:
                self.failed.add(inst.version)
                self.failures += 1
            else:
                # The open window closes on the old version; the next ones are the new one's.
                window = self.drift_window(now)
                if window is not None:
                    out.append(window)
                self._switch(inst.version, now)
                self.installs += 1
        return out

    def _switch(self, version: str, now: float) -> None:
        """Serve ``version`` from now on: the open window closes on the old version."""
        self.version = version
        self._counters = _Counters(since=now)
        self._errors = 0
        self.failed.discard(version)

    # -- encoding -------------------------------------------------------------------------
    def _message(self, channel: Channel, body: Mapping[str, Any], now: float, *,
                 retain: bool = False) -> Message:
        return self._raw(channel, encode_body(body), now, retain=retain)

    def _raw(self, channel: Channel, body_json: str, now: float, *,
             retain: bool = False) -> Message:
        self.seq += 1
        payload = encode_raw(channel, self.device_id, bd=self.bd, seq=self.seq, ts=float(now),
                             historical=False, body_json=body_json)
        return Message(self._topics[channel], payload, retain)
