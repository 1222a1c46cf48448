"""Rollout observations from what devices reported: heartbeats, update events and drift
windows go through the real ingestion writer into a real SQLite store; ``observe`` and
``device_states`` read them back."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.drift import ReferenceProfile, SummaryBuilder
from edgefleet.agent.telemetry.envelope import Channel, topic
from edgefleet.agent.update.reporter import wire_event
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.ingest.writer import Ingester
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from edgefleet.fleet_server.rollouts.model import DeviceState
from edgefleet.fleet_server.rollouts.observe import (
    RolloutScope,
    WindowCountCache,
    device_states,
    observe,
    registry_reference,
)
from edgefleet.fleet_server.storage import Store
from edgefleet.fleet_server.updates.events import UpdateEvents
from tests.fleet_server.ingest.support import envelope, make_ingest_env
from tests.fleet_server.registry.conftest import make_onnx

MODEL, OLD, NEW, OLDER = "digits", "1.0.0", "1.1.0", "0.9.0"
TARGET, OLD_TARGET = f"{MODEL}-{NEW}.tar", f"{MODEL}-{OLD}.tar"
FEATURES = ["f0", "f1", "f2"]
Lookup = Callable[[str, str], ReferenceProfile | None]


def make_profile(seed: int = 0) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5000, 3))
    return ReferenceProfile.build(x, FEATURES, rng.normal(size=(5000, 1)), ["score"], bins=10)


PROFILE = make_profile()


def lookup(profiles: dict[str, ReferenceProfile]) -> Lookup:
    def find(model: str, version: str) -> ReferenceProfile | None:
        return profiles.get(version) if model == MODEL else None

    return find


SAME_REFERENCE = lookup({OLD: PROFILE, NEW: PROFILE, OLDER: PROFILE})


class Fleet:
    """Devices talking to the real ingestion writer, one seq counter per device."""

    def __init__(self, store: Store, reference: Lookup = SAME_REFERENCE) -> None:
        self.store = store
        self.reference = reference
        self.seq: dict[str, int] = {}
        self.pending: list[tuple[str, bytes]] = []

    def send(self, device: str, channel: Channel, body: dict[str, Any]) -> None:
        self.seq[device] = self.seq.get(device, 0) + 1
        self.pending.append((topic(device, channel),
                             envelope(channel, device, body, seq=self.seq[device])))

    def flush(self) -> None:
        ing = Ingester(self.store, self.reference).start()
        try:
            for t, payload in self.pending:
                assert ing.submit(t, payload)
            assert ing.wait_idle(20)
        finally:
            ing.stop()
        self.pending.clear()
        assert not [r for r in self.store.db["ingest_counters"].rows
                    if r["name"].startswith("rejected.")]

    def heartbeat(self, device: str, version: str | None = None, p95: float = 1.0,
                  **extra: Any) -> None:
        entry: dict[str, Any] = {"predictions": 100, "latency_ms": {"p50": p95 / 2,
                                                                     "p95": p95}, **extra}
        if version is not None:
            entry["version"] = version
        self.send(device, Channel.HEARTBEAT, {"uptime_s": 1.0, "models": {MODEL: entry}})

    def updates(self, device: str, *steps: tuple[str, str], bundle: str = TARGET,
                error: str | None = None) -> None:
        """Transitions as the agent's machine reports them (``wire_event``)."""
        events = [wire_event({"type": "update_state", "from": frm, "to": to, "state": to,
                              "bundle": bundle,
                              "error": error if to == "rolling_back" else None}, time.time())
                  for frm, to in steps]
        self.send(device, Channel.EVENTS, {"events": events})

    def update_error(self, device: str, state: str, message: str) -> None:
        event = wire_event({"type": "update_error", "state": state, "error": message,
                            "bundle": TARGET}, time.time())
        self.send(device, Channel.EVENTS, {"events": [event]})

    def window(self, device: str, version: str, *, n: int = 400, shift_out: float = 0.0,
               shift_f1: float = 0.0, end: float | None = None, seed: int = 0) -> None:
        profile = self.reference(MODEL, version)
        assert profile is not None
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 3))
        x[:, 1] += shift_f1
        builder = SummaryBuilder(profile, version)
        builder.add_batch(x, rng.normal(size=(n, 1)) + shift_out)
        end = time.time() if end is None else end
        summary = builder.finish(end - 60.0, end)
        self.send(device, Channel.DRIFT, {"model": MODEL, "version": version,
                                          "summary": summary.to_dict()})


# From the check that found the assignment (the check itself names the bundle the device
# served before, or none).
INSTALL = [("checking", "downloading"), ("downloading", "verifying"),
           ("verifying", "staging"), ("staging", "warming"), ("warming", "switching"),
           ("switching", "committed")]


def scope(**changes: Any) -> RolloutScope:
    base: dict[str, Any] = {
        "model": MODEL, "new_version": NEW, "new_target": TARGET, "old_version": OLD,
        "wave_devices": ("w0", "w1"), "assigned_devices": ("a0", "w0", "w1"),
        "control_devices": ("c0", "c1"), "since": time.time() - 5, "started": time.time() - 5,
        "lost_after_s": 60.0}
    base.update(changes)
    return RolloutScope(**base)


# -- install states --------------------------------------------------------------------


def test_device_states_follow_the_update_events(obs_store: Store) -> None:
    since = time.time() - 1
    fleet = Fleet(obs_store)
    fleet.updates("installed", ("committed", "checking"), bundle=OLD_TARGET)
    fleet.updates("installed", *INSTALL)
    fleet.updates("downloading", *INSTALL[:2])
    fleet.updates("failing", *INSTALL[:4], ("warming", "rolling_back"), error="smoke test")
    fleet.updates("rolled-back", *INSTALL[:4], ("warming", "rolling_back"),
                  ("rolling_back", "idle"), error="smoke test")
    # a failed download is retried: the retry counts, not the old failure
    fleet.updates("retried", *INSTALL[:1], ("downloading", "rolling_back"),
                  ("rolling_back", "idle"), error="timeout")
    fleet.updates("retried", ("idle", "checking"), bundle=OLD_TARGET)
    fleet.updates("retried", *INSTALL[:2])
    # committed earlier, then its periodic checks (the bundle stays its assignment)
    fleet.updates("checking", ("committed", "checking"), ("checking", "idle"))
    fleet.updates("broken", *INSTALL)
    fleet.update_error("broken", "committed", "active model unusable")
    fleet.updates("elsewhere", *INSTALL, bundle="other-2.0.0.tar")
    # installed, then moved on to another bundle: its first event names the old one
    fleet.updates("moving", *INSTALL, ("committed", "checking"), ("checking", "downloading"))
    fleet.flush()
    devices = ["installed", "downloading", "failing", "rolled-back", "retried", "checking",
               "broken", "elsewhere", "moving", "silent"]
    assert device_states(obs_store, devices, TARGET, since) == {
        "installed": DeviceState.INSTALLED, "downloading": DeviceState.DOWNLOADING,
        "failing": DeviceState.FAILED, "rolled-back": DeviceState.ROLLED_BACK,
        "retried": DeviceState.DOWNLOADING, "checking": DeviceState.INSTALLED,
        "broken": DeviceState.FAILED, "elsewhere": DeviceState.PENDING,
        "moving": DeviceState.INSTALLED, "silent": DeviceState.PENDING}
    assert device_states(obs_store, [], TARGET, since) == {}

    # events before the wave do not count; the stored status (state of the last event,
    # last bundle named) still knows a commit
    later = time.time() + 5
    assert device_states(obs_store, devices, TARGET, later) == {
        **dict.fromkeys(devices, DeviceState.PENDING), "installed": DeviceState.INSTALLED,
        "broken": DeviceState.INSTALLED}


# -- the whole observation -------------------------------------------------------------


def test_observe_a_wave_against_its_control_group(obs_store: Store) -> None:
    t0 = time.time()
    fleet = Fleet(obs_store)
    # a0 (an earlier wave) ran OLD with shadow on, then switched; w0 and w1 are this wave
    fleet.heartbeat("a0", OLD, 2.0, feedback={"labeled": 100, "correct": 90},
                    shadow={"version": NEW, "compared": 1000, "agreed": 10})
    for device, p95 in (("a0", 4.0), ("w0", 6.0), ("w1", 5.0)):
        fleet.heartbeat(device, NEW, p95, feedback={"labeled": 50, "correct": 40})
    for i, p95 in enumerate((1.0, 2.0, 9.0)):
        fleet.heartbeat(f"c{i}", OLD, p95, feedback={"labeled": 200, "correct": 190},
                        shadow={"version": NEW, "compared": 300, "agreed": 240})
    fleet.heartbeat("c3", OLD, 7.0, shadow={"version": "2.0.0", "compared": 50, "agreed": 0})
    fleet.updates("w0", *INSTALL)
    fleet.updates("w1", *INSTALL[:4], ("warming", "rolling_back"), ("rolling_back", "idle"),
                  error="latency budget")
    # drift: the new version's output moved by one sd and feature f1 by half of one
    for i, device in enumerate(("a0", "w0")):
        fleet.window(device, NEW, shift_out=1.0, shift_f1=0.5, seed=i)
    fleet.window("w0", NEW, shift_out=1.0, shift_f1=0.5, end=t0 - 3600, seed=7)  # too old
    for i, device in enumerate(("c0", "c1", "c2", "a0")):
        fleet.window(device, OLD, seed=10 + i)
    fleet.window("c0", OLD, end=t0 - 3 * 86400, seed=20)  # before the look-back
    fleet.window("c0", OLDER, n=999, seed=21)  # another version: not control here
    fleet.flush()

    obs = observe(obs_store, scope(wave_devices=("w0", "w1", "w2"),
                                   assigned_devices=("a0", "w0", "w1", "w2"),
                                   control_devices=("c0", "c1", "c2", "c3"),
                                   since=t0 - 10, started=t0 - 100, shadow=True),
                  t0 + 30, reference=SAME_REFERENCE)
    assert (obs.wave_devices, obs.installed, obs.failed, obs.downloading) == (3, 1, 1, 0)
    assert obs.lost == 0  # w2 never reported, but its grace since the wave is not over
    assert obs.latency_p95_new_ms == 5.0  # median of a0, w0, w1 (w2 has no row)
    assert obs.latency_p95_old_ms == 4.5  # median of the control devices c0..c3
    assert (obs.labels_new, obs.accuracy_new) == (150, pytest.approx(0.8))
    assert (obs.labels_control, obs.accuracy_control) == (600, pytest.approx(0.95))
    # a0 switched (its old row with shadow data no longer counts); c3 shadows another one
    assert obs.shadow_enabled
    assert (obs.shadow_samples, obs.shadow_agreement) == (900, pytest.approx(0.8))
    assert (obs.predictions_new, obs.predictions_control) == (800, 1600)
    assert obs.output_psi is not None and obs.output_psi > 0.5
    assert obs.output_js is not None and 0.05 < obs.output_js <= 1.0
    assert obs.input_psi_feature == "f1"
    assert obs.input_psi_max is not None and 0.1 < obs.input_psi_max < obs.output_psi

    # the same data, shadow mode off
    off = observe(obs_store, scope(shadow=False), t0 + 30, reference=SAME_REFERENCE)
    assert (off.shadow_enabled, off.shadow_samples, off.shadow_agreement) == (False, 0, None)


def test_same_distribution_gives_small_drift(obs_store: Store) -> None:
    fleet = Fleet(obs_store)
    for i in range(4):
        fleet.window(f"w{i % 2}", NEW, n=2000, seed=i)
        fleet.window(f"c{i % 2}", OLD, n=2000, seed=100 + i)
    fleet.flush()
    obs = observe(obs_store, scope(), time.time(), reference=SAME_REFERENCE)
    assert (obs.predictions_new, obs.predictions_control) == (8000, 8000)
    assert obs.output_psi is not None and obs.output_psi < 0.02
    assert obs.output_js is not None and obs.output_js < 0.01
    assert obs.input_psi_max is not None and obs.input_psi_max < 0.02
    assert obs.input_psi_feature in FEATURES


def test_without_control_devices_the_assigned_devices_old_rows_are_control(
        obs_store: Store) -> None:
    fleet = Fleet(obs_store)
    fleet.heartbeat("w0", OLD, 3.0, feedback={"labeled": 10, "correct": 10})
    fleet.heartbeat("w1", OLD, 5.0, feedback={"labeled": 10, "correct": 5})
    fleet.heartbeat("w0", NEW, 8.0)
    fleet.window("w0", OLD, seed=1)
    fleet.window("w0", NEW, shift_out=2.0, seed=2)
    fleet.flush()
    obs = observe(obs_store, scope(control_devices=()), time.time(),
                  reference=SAME_REFERENCE)
    assert (obs.latency_p95_new_ms, obs.latency_p95_old_ms) == (8.0, 4.0)
    assert (obs.labels_control, obs.accuracy_control) == (20, 0.75)
    assert (obs.labels_new, obs.accuracy_new) == (0, None)
    assert (obs.predictions_new, obs.predictions_control) == (400, 400)
    assert obs.output_psi is not None and obs.output_psi > 1.0


def test_any_other_version_is_control_when_old_version_is_none(obs_store: Store) -> None:
    fleet = Fleet(obs_store)
    fleet.heartbeat("c0", OLDER, 1.0)
    fleet.heartbeat("c1", OLD, 3.0)
    fleet.heartbeat("w0", NEW, 2.0)
    fleet.window("c0", OLDER, n=100, seed=1)
    fleet.window("c1", OLD, n=300, seed=2)
    fleet.window("w0", NEW, n=50, seed=3)
    fleet.flush()
    obs = observe(obs_store, scope(old_version=None), time.time(), reference=SAME_REFERENCE)
    assert obs.latency_p95_old_ms == 2.0
    assert (obs.predictions_new, obs.predictions_control) == (50, 400)
    pinned = observe(obs_store, scope(), time.time(), reference=SAME_REFERENCE)
    assert (pinned.latency_p95_old_ms, pinned.predictions_control) == (3.0, 300)


def test_windows_of_a_different_reference_are_not_compared(obs_store: Store) -> None:
    own = lookup({OLD: PROFILE, NEW: make_profile(seed=5)})
    fleet = Fleet(obs_store, own)
    fleet.window("c0", OLD, seed=1)
    fleet.window("w0", NEW, seed=2)
    fleet.flush()
    obs = observe(obs_store, scope(), time.time(), reference=own)
    assert (obs.predictions_new, obs.predictions_control) == (400, 0)
    assert obs.output_psi is None and obs.input_psi_max is None
    # no reference given and no registry in this database: no profiles, no drift
    blind = observe(obs_store, scope(), time.time())
    assert (blind.predictions_new, blind.output_psi, blind.input_psi_feature) == (0, None, None)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).replace(microsecond=0).isoformat()


def test_lost_devices(obs_store: Store) -> None:
    t0 = time.time()
    fleet = Fleet(obs_store)
    for device in ("w0", "w1", "w2"):
        fleet.heartbeat(device)
    fleet.send("w3", Channel.STATUS, {"state": "online"})  # seen, but no heartbeat
    fleet.flush()
    obs_store.db.execute("UPDATE ingest_presence SET heartbeat_at = ? WHERE device_id = 'w2'",
                         [_iso(t0 - 600)])
    wave = ("w0", "w1", "w2", "w3", "w4")  # w4 was never seen
    in_grace = observe(obs_store, scope(wave_devices=wave, since=t0 - 10), t0 + 30)
    assert (in_grace.wave_devices, in_grace.lost) == (5, 0)
    after = observe(obs_store, scope(wave_devices=wave, since=t0 - 100), t0 + 30)
    assert after.lost == 3  # w2 (old heartbeat), w3 (none), w4 (never seen)
    much_later = observe(obs_store, scope(wave_devices=wave, since=t0 - 100), t0 + 1000)
    assert much_later.lost == 5
    assert (much_later.installed, much_later.failed, much_later.downloading) == (0, 0, 0)


def test_nothing_reported_yet(obs_store: Store) -> None:
    obs = observe(obs_store, scope(), time.time(), reference=SAME_REFERENCE)
    assert obs.wave_devices == 2 and obs.lost == 0
    assert (obs.latency_p95_new_ms, obs.latency_p95_old_ms, obs.accuracy_new,
            obs.accuracy_control, obs.output_psi, obs.shadow_agreement) == (None,) * 6


def test_window_cache_reads_each_window_once(obs_store: Store) -> None:
    fleet = Fleet(obs_store)
    fleet.window("w0", NEW, shift_out=1.0, seed=1)
    fleet.window("c0", OLD, seed=2)
    fleet.flush()
    cache = WindowCountCache(max_windows=10)
    first = observe(obs_store, scope(), time.time(), reference=SAME_REFERENCE,
                    window_cache=cache)
    assert len(cache) == 2
    # the cached counts are used: a stored summary changed behind the cache is not re-read
    obs_store.db.execute("UPDATE drift_windows SET summary = '{}'")
    again = observe(obs_store, scope(), time.time(), reference=SAME_REFERENCE,
                    window_cache=cache)
    assert again == first and first.output_psi is not None and first.output_psi > 0.5
    uncached = observe(obs_store, scope(), time.time(), reference=SAME_REFERENCE)
    assert (uncached.predictions_new, uncached.output_psi) == (0, None)  # unreadable now

    small = WindowCountCache(max_windows=1)
    observe(obs_store, scope(), time.time(), reference=SAME_REFERENCE, window_cache=small)
    assert len(small) == 1


def test_old_events_beyond_the_search_margin_are_skipped(obs_store: Store) -> None:
    """Thousands of events from before the wave: the state still comes from the wave's."""
    day_ago = datetime.fromtimestamp(time.time() - 86400, UTC)
    old = UpdateEvents(obs_store, clock=lambda: day_ago)
    check = [{"ts": 1.0, "kind": "state", "state": "idle", "from": "checking", "to": "idle",
              "bundle": TARGET}]
    failure = [{"ts": 1.0, "kind": "state", "state": "rolling_back", "from": "warming",
                "to": "rolling_back", "bundle": TARGET, "error": "old failure"}]
    for device in ("old-0", "old-1", "old-2"):  # 12,000 events, ending in a failure
        old.record(device, (check + failure) * 2000)
    since = time.time() - 1
    fleet = Fleet(obs_store)
    fleet.updates("old-0", *INSTALL)
    fleet.updates("old-1", *INSTALL[:2])
    fleet.flush()
    assert device_states(obs_store, ["old-0", "old-1", "old-2"], TARGET, since) == {
        "old-0": DeviceState.INSTALLED, "old-1": DeviceState.DOWNLOADING,
        "old-2": DeviceState.PENDING}
    before = device_states(obs_store, ["old-0", "old-1", "old-2"], TARGET,
                           day_ago.timestamp() - 5)
    assert set(before.values()) == {DeviceState.INSTALLED, DeviceState.DOWNLOADING,
                                    DeviceState.FAILED}


def test_reference_profiles_come_from_the_registry_by_default(tmp_path: Path) -> None:
    env = make_ingest_env(tmp_path / "data")
    store = env.services.store
    try:
        model_file = make_onnx(tmp_path / "model.onnx", n_features=3, n_out=1)
        for version in (OLD, NEW):
            with model_file.open("rb") as f:
                registry_service(env.services).upload(
                    MODEL, version, f, UploadMetadata(reference_profile=PROFILE.to_dict()),
                    SYSTEM)
        fleet = Fleet(store, registry_reference(store))
        fleet.window("w0", NEW, shift_out=1.0, seed=1)
        fleet.window("c0", OLD, seed=2)
        fleet.flush()
        obs = observe(store, scope(), time.time())
        assert (obs.predictions_new, obs.predictions_control) == (400, 400)
        assert obs.output_psi is not None and obs.output_psi > 0.5
        assert registry_reference(store)(MODEL, "9.9.9") is None
    finally:
        store.close()
