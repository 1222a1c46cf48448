"""Shadow candidates named by the director, fetched through the image repository.

Real fleet-server repositories over real HTTP, real bundles of real ONNX models, the real
``UpdateAgent`` (its ``ShadowManager`` after each check).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.update.agent_loop import UpdateAgent
from edgefleet.agent.update.shadow import ShadowCandidate, ShadowError, ShadowSpec
from edgefleet.agent.update.state import UpdateState
from tests.agent.update.support import assignment_for, build_bundle, manifest_of, sha256
from tests.agent.update.test_agent_loop import DEVICE, enroll_dir
from tests.fleet_server.updates.harness import RepoServer, repo_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    with repo_server(tmp_path / "server") as srv:
        yield srv


@pytest.fixture
def agent(server: RepoServer, tmp_path: Path) -> Iterator[UpdateAgent]:
    a = UpdateAgent.from_state_dir(enroll_dir(server, tmp_path / "device"))
    yield a
    a.close(flush_timeout_s=0)


def errors(agent: UpdateAgent) -> list[dict[str, Any]]:
    return [e for e in agent.reporter.events() if e["kind"] == "error"]


def test_director_names_a_shadow_the_image_repo_vouches_for(
        server: RepoServer, agent: UpdateAgent, tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    active, twin, other = (build_bundle(bundles, "1", seed=1), build_bundle(bundles, "1b", seed=1),
                           build_bundle(bundles, "2", seed=2))
    for b in (active, twin, other):
        server.repo.add_bundle(b, b.name)
    told: list[ShadowCandidate | None] = []
    agent.set_shadow_listener(told.append)

    server.repo.assign(DEVICE, active.name, shadow_target=twin.name, shadow_rate=0.5)
    assert agent.run_once().state is UpdateState.COMMITTED
    assert agent.holder.label == assignment_for(active).key  # the shadow is not installed
    assert agent.installed_target == active.name and agent.shadow_target == twin.name
    first = told[-1]
    assert first is not None
    assert (first.target, first.key, first.version, first.sample_rate) == (
        twin.name, assignment_for(twin).key, "1b", 0.5)
    sample = manifest_of(twin).sample_arrays()
    np.testing.assert_allclose(first.runner.predict(sample)["probabilities"],
                               agent.holder.predict(sample)["probabilities"], rtol=1e-6)

    # same candidate, another rate: the same loaded runner at the new rate
    server.repo.assign(DEVICE, active.name, shadow_target=twin.name, shadow_rate=1.0)
    agent.run_once()
    second = told[-1]
    assert second is not None and second.sample_rate == 1.0 and second.runner is first.runner

    # another candidate replaces it
    server.repo.assign(DEVICE, active.name, shadow_target=other.name)
    agent.run_once()
    third = told[-1]
    assert third is not None and third.target == other.name and third.sample_rate == 0.1
    assert agent.shadow is not None
    assert len(list(agent.shadow.dir.glob("model-*"))) == 1  # the old one is deleted

    # the assignment drops the shadow entry: shadowing stops, files go
    server.repo.assign(DEVICE, active.name)
    agent.run_once()
    assert told[-1] is None and agent.shadow_target is None
    assert list(agent.shadow.dir.glob("*")) == []
    assert errors(agent) == []
    assert agent.holder.label == assignment_for(active).key


def test_a_bad_shadow_is_an_error_event_and_never_touches_the_active_model(
        server: RepoServer, agent: UpdateAgent, tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    active, nan = build_bundle(bundles, "1", seed=1), build_bundle(bundles, "n", kind="nan")
    tampered = build_bundle(bundles, "t", seed=3)
    for b in (active, nan, tampered):
        server.repo.add_bundle(b, b.name)
    told: list[ShadowCandidate | None] = []
    agent.set_shadow_listener(told.append)

    server.repo.assign(DEVICE, active.name, shadow_target=nan.name)
    assert agent.run_once().state is UpdateState.COMMITTED
    assert agent.shadow_target is None and told == []
    [event] = errors(agent)
    assert (event["state"], event["bundle"]) == ("idle", nan.name)
    assert "shadow" in event["error"] and "NaN" in event["error"]
    agent.run_once()  # a candidate whose model failed is not tried again
    assert len(errors(agent)) == 1
    assert agent.machine.record.state is UpdateState.IDLE
    assert agent.holder.label == assignment_for(active).key

    # the image repository vouches for the bytes: a file changed on the server is refused
    stored = server.repo.layout.image_targets / f"{sha256(tampered)}.{tampered.name}"
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0xFF
    stored.write_bytes(bytes(data))
    server.repo.assign(DEVICE, active.name, shadow_target=tampered.name)
    agent.run_once()
    assert agent.shadow_target is None
    assert "TamperedDataError" in errors(agent)[-1]["error"]
    assert errors(agent)[-1]["bundle"] == tampered.name
    assert agent.holder.label == assignment_for(active).key
    agent.holder.predict(manifest_of(active).sample_arrays())
    assert not any(e["state"] == "rolling_back" for e in agent.reporter.events())


def test_shadow_spec_parsing() -> None:
    assert ShadowSpec.from_entry({"target": "m.tar", "sample_rate": "0.25"}) == \
        ShadowSpec("m.tar", 0.25)
    assert ShadowSpec.from_entry({"target": "m.tar", "sample_rate": 1}).sample_rate == 1.0
    bad: object
    for bad in (None, [], {"target": "m.tar"}, {"target": "", "sample_rate": "0.1"},
                {"target": "m.tar", "sample_rate": "0"}, {"target": "m.tar", "sample_rate": "2"},
                {"target": "m.tar", "sample_rate": "nan"}, {"target": "m.tar", "sample_rate": True},
                {"target": 3, "sample_rate": "0.1"}, {"target": "m.tar", "sample_rate": "x"}):
        with pytest.raises(ShadowError):
            ShadowSpec.from_entry(bad)


class SteppingClock:
    """A monotonic clock that moves one second each time it is read."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_early_checks_are_rate_limited_and_coalesced(agent: UpdateAgent) -> None:
    clock = SteppingClock()
    agent._clock = clock
    agent.check_interval_s = 1e6
    stop = threading.Event()
    agent.request_check()
    agent._wait(stop)  # due at once
    assert agent.early_checks == 1
    first = clock.now
    for _ in range(3):  # a burst within the limit: one check, once the limit is over
        agent.request_check()
    agent._wait(stop)
    assert agent.early_checks == 2
    assert clock.now - first >= agent.min_early_check_s
    stop.set()
    agent._wait(stop)  # a stop ends the wait without a check
    assert agent.early_checks == 2
