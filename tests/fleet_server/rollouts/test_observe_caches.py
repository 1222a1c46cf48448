"""The observer's caches change what is read, never what is observed: install states
followed event by event equal a full read after every step; an installs-only observation
matches the full one on what it covers."""

from __future__ import annotations

import time

from edgefleet.fleet_server.rollouts.model import DeviceState
from edgefleet.fleet_server.rollouts.observe import (
    InstallStateCache,
    WindowCountCache,
    device_states,
    observe,
)
from edgefleet.fleet_server.storage import Store
from tests.fleet_server.rollouts.test_observe import (
    INSTALL,
    OLD,
    OLD_TARGET,
    SAME_REFERENCE,
    TARGET,
    Fleet,
    scope,
)

DEVICES = ("w0", "w1", "w2", "w3")


def test_followed_install_states_equal_a_full_read_after_every_step(obs_store: Store) -> None:
    fleet = Fleet(obs_store)
    since = time.time() - 5
    cache = InstallStateCache()
    steps = [
        lambda: fleet.updates("w0", *INSTALL[:2]),                        # downloading
        lambda: fleet.updates("w0", *INSTALL[2:]),                        # installed
        lambda: fleet.updates("w1", ("staging", "warming"), ("warming", "rolling_back"),
                              error="smoke test failed"),                 # failed
        lambda: fleet.updates("w1", ("rolling_back", "idle")),            # rolled back
        lambda: fleet.update_error("w2", "committed", "model unusable"),  # failed
        lambda: fleet.updates("w3", *INSTALL),                            # installed
        lambda: fleet.updates("w3", ("committed", "checking"), bundle=OLD_TARGET),
        lambda: fleet.updates("x9", *INSTALL),                            # not in the wave
    ]
    seen = []
    for step in steps:
        step()
        fleet.flush()
        followed = device_states(obs_store, DEVICES, TARGET, since, cache=cache)
        assert followed == device_states(obs_store, DEVICES, TARGET, since)
        seen.append(followed)
    assert seen[-1] == {"w0": DeviceState.INSTALLED, "w1": DeviceState.ROLLED_BACK,
                        "w2": DeviceState.FAILED, "w3": DeviceState.INSTALLED}
    assert seen[0]["w0"] is DeviceState.DOWNLOADING
    # another device set or start time is another fold, read in full
    other = device_states(obs_store, DEVICES[:2], TARGET, since, cache=cache)
    assert other == {"w0": DeviceState.INSTALLED, "w1": DeviceState.ROLLED_BACK}


def test_an_installs_only_observation_matches_the_full_one_on_installs(
        obs_store: Store) -> None:
    fleet = Fleet(obs_store)
    fleet.updates("w0", *INSTALL)
    fleet.heartbeat("w0", version=OLD)
    fleet.window("c0", OLD, seed=2)
    fleet.flush()
    now = time.time()
    view = scope(since=now - 600, started=now - 600)
    full = observe(obs_store, view, now, reference=SAME_REFERENCE,
                   window_cache=WindowCountCache(), install_cache=InstallStateCache())
    quick = observe(obs_store, view, now, reference=SAME_REFERENCE, installs_only=True)
    covered = ("wave_devices", "installed", "failed", "downloading", "lost")
    assert {k: getattr(quick, k) for k in covered} == {k: getattr(full, k) for k in covered}
    assert (full.installed, full.lost) == (1, 1)
    assert full.latency_p95_old_ms is not None and quick.latency_p95_old_ms is None
