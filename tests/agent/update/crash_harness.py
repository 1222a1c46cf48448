"""Crash consistency harness (test_crash.py, benchmarks/updates.py): SIGKILL the agent at
random points during updates, restart, check.

Each iteration assigns a bundle (a good new version, or one that fails warm-up), starts
the agent in a child process and kills it with SIGKILL, either right after its n-th
persisted state change (so every state boundary is hit) or after a random delay (so
kills land inside downloads, extraction, fsyncs and warm-up). Sometimes the restarted
agent is killed again while it resumes. After every kill the disk must hold a complete,
verified, loadable active model; the final restart must finish the update (good bundle)
or roll it back (bad bundle) with the right model active. Seeds are fixed.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgefleet.agent.runtime import load_model
from edgefleet.agent.update.machine import smoke_test
from edgefleet.agent.update.slots import Slots
from edgefleet.agent.update.state import RESTING_STATES, StateStore, UpdateState
from tests.agent.update.support import DirVerifier, assignment_for, build_bundle

CHILD = Path(__file__).with_name("crash_child.py")
EVENT_KILLS = 7  # state changes of one update: good or bad, 7 each
SIZES = (8, 512, 3)  # large enough that downloads take several chunks


class Agent:
    def __init__(self, root: Path) -> None:
        self.state_dir = root / "agent"
        self.server = root / "server"
        self.events = root / "events.jsonl"

    def _start(self, kill_after: int | None) -> subprocess.Popen[str]:
        args = [sys.executable, str(CHILD), str(self.state_dir), str(self.server),
                str(self.events)]
        if kill_after is not None:
            args.append(str(kill_after))
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def run(self) -> dict[str, str]:
        proc = self._start(None)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill_after_events(self, n: int) -> int:
        proc = self._start(n)
        proc.communicate(timeout=60)
        return proc.returncode

    def kill_after_delay(self, delay_s: float) -> int:
        proc = self._start(None)
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        return proc.returncode


def check_disk(agent: Agent) -> str:
    """After any crash: a verified, loadable model is active; return its bundle key."""
    StateStore(agent.state_dir / "update-state.json").load()  # parses: never torn
    slots = Slots(agent.state_dir)
    pointer = slots.pointer()
    assert pointer is not None, "no active model after a crash"
    content = slots.read(pointer.slot, verify=True)  # complete, digest matches manifest
    assert content.bundle == pointer.bundle
    with load_model(content.model_path) as runner:
        smoke_test(runner, content.manifest)  # finite, declared shapes, within budget
    return pointer.bundle


def build_bundles(root: Path) -> dict[str, Path]:
    """Four good bundles, large enough that downloads take several chunks."""
    return {f"v{i}": build_bundle(root, f"v{i}", seed=i, sizes=SIZES) for i in range(1, 5)}


def run_crash_schedule(tmp_path: Path, bundles: dict[str, Path], iterations: int
                       ) -> dict[str, object]:
    """Run ``iterations`` kill/restart rounds; AssertionError on any inconsistency.

    Returns the counts of kills and outcomes.
    """
    agent = Agent(tmp_path)
    verifier = DirVerifier(agent.server)
    verifier.assign(bundles["v1"])
    assert agent.run()["state"] == "committed"
    active = check_disk(agent)
    goods = ["v1", "v2", "v3", "v4"]
    kills = {"events": 0, "timed": 0, "during_resume": 0}
    outcomes = {"committed": 0, "rolled_back": 0}
    # Every "kill right after the n-th state change" for a good and a bad bundle, plus
    # kills after random delays, in a fixed shuffled order.
    schedule: list[tuple[str, int, bool]] = [
        ("events", n, bad) for bad in (False, True) for n in range(1, EVENT_KILLS + 1)
    ] + [("timed", 0, i % 2 == 1) for i in range(max(0, iterations - 2 * EVENT_KILLS))]
    random.Random(1).shuffle(schedule)
    for i, (mode, n, bad) in enumerate(schedule):
        rng = random.Random(1000 + i)
        current = next(g for g in goods if assignment_for(bundles[g]).key == active)
        if bad:  # a fresh bad bundle each time (a failed one is remembered, not retried)
            kind = rng.choice(["nan", "shape", "slow", "corrupt"])
            bundle = build_bundle(tmp_path / "bad", f"bad-{kind}-{i}", seed=i, kind=kind,
                                  sizes=SIZES)
        else:
            bundle = bundles[rng.choice([g for g in goods if g != current])]
        target = assignment_for(bundle).key
        verifier.assign(bundle)
        if mode == "events":
            code = agent.kill_after_events(n)
            kills["events"] += code == -signal.SIGKILL
        else:
            code = agent.kill_after_delay(rng.uniform(0.0, 0.25))
            kills["timed"] += code == -signal.SIGKILL
        assert code in (0, -signal.SIGKILL)
        check_disk(agent)
        if rng.random() < 0.3:  # crash again while resuming
            code = agent.kill_after_delay(rng.uniform(0.0, 0.1))
            kills["during_resume"] += code == -signal.SIGKILL
            check_disk(agent)
        result = agent.run()
        now = check_disk(agent)
        record = StateStore(agent.state_dir / "update-state.json").load()
        assert record.state in RESTING_STATES
        assert result["label"] == now  # the live model is the active slot's model
        if not bad:
            assert now == target, f"iteration {i}: good bundle {bundle.name} not installed"
            outcomes["committed"] += 1
        else:
            assert now == active, f"iteration {i}: bad bundle {bundle.name} did not roll back"
            assert record.state is UpdateState.IDLE
            outcomes["rolled_back"] += 1
        active = now
    assert kills["events"] == 2 * EVENT_KILLS and kills["timed"] >= 2
    assert outcomes["committed"] and outcomes["rolled_back"]
    events = [json.loads(line) for line in agent.events.read_text().splitlines()]
    resumed = {e["state"] for e in events if e["type"] == "update_resumed"}
    # the agent was resumed from every busy state at least once
    assert resumed == {s.value for s in set(UpdateState) - RESTING_STATES}, resumed
    return {"iterations": len(schedule), **kills, **outcomes}
