"""Eligibility, restart with backoff and clean stop, against real child processes.

The child here is a tiny real Python command injected as the SuperNode's argv (the real
``flower-supernode`` runs in test_federated_supernode.py); the clock is injected so that
the backoff can be checked exactly, without sleeping.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgefleet.agent.daemon.feedback import FeedbackStore
from edgefleet.agent.federated.config import FederatedConfig, SupervisorPolicy
from edgefleet.agent.federated.eligibility import State, backoff_s, decide
from edgefleet.agent.federated.errors import JoinError, NodeKeyError
from edgefleet.agent.federated.join import JoinInfo
from edgefleet.agent.federated.nodekey import ensure_node_key, public_key_path
from edgefleet.agent.federated.supervisor import PID_FILE, SuperNodeSupervisor
from edgefleet.agent.runtime import ModelRunner
from tests.agent.federated.conftest import predict_and_label

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]
CRASHER = [sys.executable, "-c", "import sys; print('boom: no SuperLink', flush=True); "
                                 "sys.exit(3)"]
CONFIG = FederatedConfig(enabled=True, superlink="127.0.0.1:1", model="mlp",
                         min_examples=5, max_load_per_cpu=1.0, refresh_s=3600)
POLICY = SupervisorPolicy(check_s=0.05, initial_backoff_s=2.0, max_backoff_s=5.0, jitter=0.0,
                          stable_after_s=100.0, stop_grace_s=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def wait_until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def make(tmp_path: Path, store: FeedbackStore) -> Iterator[Callable[..., SuperNodeSupervisor]]:
    made: list[SuperNodeSupervisor] = []

    def factory(command: list[str], *, config: FederatedConfig = CONFIG,
                load: Callable[[], float] = lambda: 0.1,
                clock: Callable[[], float] = time.monotonic,
                policy: SupervisorPolicy = POLICY, work: str = "fl") -> SuperNodeSupervisor:
        sup = SuperNodeSupervisor(config, store=store, work_dir=tmp_path / work, policy=policy,
                                  command=lambda: list(command), load_per_cpu=load,
                                  env=os.environ, clock=clock, rng=random.Random(0))
        made.append(sup)
        return sup

    yield factory
    for sup in made:
        sup.stop()


def test_decide_covers_off_data_and_busy_with_hysteresis() -> None:
    policy = SupervisorPolicy(running_load_factor=1.5)

    def verdict(config: FederatedConfig = CONFIG, examples: int | None = 50,
                load: float = 0.5, running: bool = False) -> tuple[State, str]:
        v = decide(config, policy, examples=examples, load_per_cpu=load, running=running)
        return v.state, v.reason

    assert verdict(replace(CONFIG, enabled=False))[0] is State.OFF
    assert verdict(examples=None) == (State.INELIGIBLE, "no dataset exported yet")
    assert verdict(examples=4) == (State.INELIGIBLE, "too few labelled examples: 4 < 5")
    assert verdict(examples=5) == (State.RUNNING, "")
    assert verdict(load=1.2)[0] is State.INELIGIBLE and "busy" in verdict(load=1.2)[1]
    assert verdict(load=1.2, running=True)[0] is State.RUNNING  # its own load: tolerated
    assert verdict(load=1.6, running=True)[0] is State.INELIGIBLE
    assert verdict(replace(CONFIG, max_load_per_cpu=0.0), load=50.0)[0] is State.RUNNING


def test_backoff_is_exponential_capped_and_jittered() -> None:
    exact = SupervisorPolicy(initial_backoff_s=1.0, max_backoff_s=10.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff_s(f, exact, rng) for f in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    jittered = replace(exact, jitter=0.5)
    delays = [backoff_s(3, jittered, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays) and len(set(delays)) > 100


def test_eligibility_transitions_start_and_stop_the_child(
    make: Callable[..., SuperNodeSupervisor], store: FeedbackStore, runner: ModelRunner
) -> None:
    load = [0.1]
    clock = Clock()
    sup = make(SLEEPER, load=lambda: load[0], clock=clock)

    assert sup.tick() is State.INELIGIBLE  # empty store
    assert sup.status() == {"state": "ineligible", "reason": "too few labelled examples: 0 < 5",
                            "examples": 0, "restarts": 0, "node_id": None}
    assert sup.pid is None

    predict_and_label(store, runner, 6)
    assert sup.tick() is State.INELIGIBLE  # the dataset refreshes every refresh_s only
    clock.now += CONFIG.refresh_s
    assert sup.tick() is State.RUNNING
    first = sup.pid
    assert first is not None and alive(first) and sup.status()["examples"] == 6

    load[0] = 5.0  # busy: the child is stopped
    assert sup.tick() is State.INELIGIBLE and "busy" in sup.status()["reason"]
    assert sup.pid is None and not alive(first)

    load[0] = 0.1
    assert sup.tick() is State.RUNNING  # a deliberate stop is not a restart
    second = sup.pid
    assert second is not None and second != first and sup.restarts == 0

    sup.stop()
    assert sup.status()["state"] == "off" and not alive(second)
    assert not (sup.work_dir / PID_FILE).exists()


def test_configured_off_never_starts_a_child(make: Callable[..., SuperNodeSupervisor],
                                            store: FeedbackStore, runner: ModelRunner) -> None:
    predict_and_label(store, runner, 6)
    sup = make(SLEEPER, config=replace(CONFIG, enabled=False))
    assert sup.tick() is State.OFF and sup.pid is None and sup.dataset is None
    assert sup.status()["reason"] == "federated training is configured off"


def test_health_says_starting_while_the_device_joins_or_launches(
    tmp_path: Path, store: FeedbackStore, runner: ModelRunner
) -> None:
    # Joining can take tens of seconds (the server starting its SuperLink): the status
    # says so meanwhile, not "ineligible" with the reason from before the data came.
    predict_and_label(store, runner, 6)
    seen: list[dict[str, object]] = []

    def joiner(pem: bytes) -> JoinInfo:
        seen.append(sup.status())
        raise JoinError("the fleet server at http://127.0.0.1:9 did not answer the "
                        "SuperNode key registration within 30 s")

    sup = SuperNodeSupervisor(replace(CONFIG, superlink=""), store=store,
                              work_dir=tmp_path / "join", policy=POLICY, env=os.environ,
                              load_per_cpu=lambda: 0.1, clock=Clock(),
                              rng=random.Random(0), joiner=joiner)
    try:
        assert sup.tick() is State.BACKOFF
        assert "did not answer the SuperNode key registration" in sup.status()["reason"]
    finally:
        sup.stop()
    assert [(s["state"], s["reason"]) for s in seen] == [
        ("starting", "joining the fleet server's federation")]

    def command() -> list[str]:
        seen.append(explicit.status())
        return list(SLEEPER)

    explicit = SuperNodeSupervisor(replace(CONFIG, ca_cert=tmp_path / "ca.pem"), store=store,
                                   work_dir=tmp_path / "explicit", policy=POLICY,
                                   command=command, env=os.environ, load_per_cpu=lambda: 0.1,
                                   clock=Clock(), rng=random.Random(0))
    try:
        assert explicit.tick() is State.RUNNING
    finally:
        explicit.stop()
    assert (seen[-1]["state"], seen[-1]["reason"]) == ("starting", "starting flower-supernode")


def test_a_dying_child_is_restarted_with_exponential_backoff(
    make: Callable[..., SuperNodeSupervisor], store: FeedbackStore, runner: ModelRunner
) -> None:
    predict_and_label(store, runner, 6)
    clock = Clock()
    sup = make(CRASHER, clock=clock)
    expected = [2.0, 4.0, 5.0, 5.0]  # initial 2 s, doubling, capped at 5 s
    assert sup.tick() is State.RUNNING
    for restarts, delay in enumerate(expected):
        pid = sup.pid
        assert pid is not None
        wait_until(lambda: not alive(pid))  # noqa: B023 (called before pid changes)
        # Popen.poll() may still say "running" while the reaper thread holds its lock.
        wait_until(lambda: sup.tick() is State.BACKOFF)
        reason = sup.status()["reason"]
        assert "boom: no SuperLink" in reason and f"restart in {delay:.1f} s" in reason
        clock.now += delay - 0.5
        assert sup.tick() is State.BACKOFF and sup.restarts == restarts  # not yet
        clock.now += 0.5
        assert sup.tick() is State.RUNNING and sup.restarts == restarts + 1
    log = sup.log_path.read_text()
    assert log.count("boom: no SuperLink") >= len(expected)


def test_the_supervisor_thread_restarts_and_stops_cleanly(
    make: Callable[..., SuperNodeSupervisor], store: FeedbackStore, runner: ModelRunner
) -> None:
    predict_and_label(store, runner, 6)
    sup = make(CRASHER, policy=replace(POLICY, initial_backoff_s=0.05, max_backoff_s=0.1))
    sup.start()
    wait_until(lambda: sup.restarts >= 3)
    sup.stop()
    assert sup.status()["state"] == "off" and sup.pid is None
    restarts = sup.restarts
    time.sleep(0.3)
    assert sup.restarts == restarts  # nothing starts after stop()


def test_stop_ends_the_whole_process_group_even_when_sigterm_is_ignored(
    make: Callable[..., SuperNodeSupervisor], store: FeedbackStore, runner: ModelRunner
) -> None:
    # Like a SuperNode with its SuperExec: a child with a grandchild, here deaf to SIGTERM.
    script = ("import signal, subprocess, sys, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "p = subprocess.Popen([sys.executable, '-c', "
              "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "time.sleep(120)']); "
              "print('grandchild', p.pid, flush=True); time.sleep(120)")
    predict_and_label(store, runner, 6)
    sup = make([sys.executable, "-c", script], policy=replace(POLICY, stop_grace_s=0.5))
    assert sup.tick() is State.RUNNING
    child = sup.pid
    assert child is not None
    wait_until(lambda: "grandchild" in sup.log_path.read_text())
    grandchild = int(sup.log_path.read_text().split("grandchild")[-1].split()[0])
    assert alive(grandchild)
    sup.stop()
    wait_until(lambda: not alive(child) and not alive(grandchild), timeout_s=10)


def test_a_child_left_by_a_killed_daemon_is_ended_on_the_next_start(
    make: Callable[..., SuperNodeSupervisor], store: FeedbackStore, runner: ModelRunner,
    tmp_path: Path,
) -> None:
    predict_and_label(store, runner, 6)
    script = tmp_path / "fake-supernode"  # started through its shebang, like Flower's
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    script.chmod(0o755)
    first = make([str(script), "--superlink", "127.0.0.1:1"])
    assert first.tick() is State.RUNNING
    orphan = first.pid
    assert orphan is not None
    wait_until(lambda: b"fake-supernode" in Path(f"/proc/{orphan}/cmdline").read_bytes())
    # The daemon dies without stopping it: a new supervisor on the same work_dir.
    second = make(SLEEPER, config=replace(CONFIG, enabled=False))
    second.start()
    wait_until(lambda: not alive(orphan), timeout_s=10)
    assert not (second.work_dir / PID_FILE).exists()
    second.stop()

    # A recorded pid now used by an unrelated process (other argv) is left alone.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             start_new_session=True)
    try:
        (second.work_dir / PID_FILE).write_text(f"{other.pid}\n{script}\0--superlink")
        make(SLEEPER, config=replace(CONFIG, enabled=False)).start()
        assert not (second.work_dir / PID_FILE).exists()
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_the_node_key_is_p384_openssh_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.key"
    key = ensure_node_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert public_key_path(path).read_bytes() == key.public_key_pem
    os.chmod(path, 0o644)
    again = ensure_node_key(path)  # kept, not regenerated; permissions tightened
    assert again.public_key_pem == key.public_key_pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    ed = tmp_path / "ed25519.key"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    with pytest.raises(NodeKeyError, match="must be EC P-384"):
        ensure_node_key(ed)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(NodeKeyError, match="cannot load"):
        ensure_node_key(tmp_path / "junk.key")


def test_the_flower_command_uses_tls_node_auth_and_the_dataset(
    tmp_path: Path, store: FeedbackStore
) -> None:
    ca = tmp_path / "ca.pem"
    config = replace(CONFIG, ca_cert=ca, superlink="10.0.0.5:9092")
    sup = SuperNodeSupervisor(config, store=store, work_dir=tmp_path / "fl")
    argv = sup.flower_command()
    assert Path(argv[0]).name == "flower-supernode"
    assert argv[argv.index("--superlink") + 1] == "10.0.0.5:9092"
    assert argv[argv.index("--root-certificates") + 1] == str(ca)
    key = Path(argv[argv.index("--auth-supernode-private-key") + 1])
    assert key == tmp_path / "fl" / "node.key" and key.exists()
    node_config = argv[argv.index("--node-config") + 1]
    assert f"data-path='{tmp_path / 'fl' / 'dataset.npz'}'" in node_config
    assert "min-examples=5" in node_config and "holdout-fraction=0.2" in node_config
    assert "--insecure" not in argv
    # a SuperLink unreachable this long ends the node; the next start joins again
    assert float(argv[argv.index("--max-wait-time") + 1]) == 300.0
