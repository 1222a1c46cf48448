"""Two staged rollouts on the running fleet: one completes, one is rolled back."""

from __future__ import annotations

import json
from typing import Any

from edgefleet.tools.demo.core import Demo, DemoError
from edgefleet.tools.demo.fleet import (
    FLEET_GROUP,
    Fleet,
    FleetReleases,
    Release,
    ms,
    wait_for_heartbeat,
)

ROLLOUT_TIMEOUT_S = 150.0  # a rollout ends well before: bake 3 s, at most 60 s of extension
# Gate thresholds of the demo's rollouts (the others keep the server's defaults). Nobody
# sends labels back in the demo, so the accuracy gate is off; on a shared 2-core machine
# the p95 of a 0.1 ms model call is scheduling noise (ratios of 7 seen between one device
# and the others' median), so the latency gate is off too; a device is lost after 60 s.
# 400 predictions per side keep the PSI of two samples of the same data (the largest of
# 64 input features) near 0.07, well below the 0.25 limit; 150 gave 0.15.
ROLLOUT_GATES: dict[str, Any] = {"min_predictions": 400, "max_latency_p95_ratio": None,
                                 "max_accuracy_drop": None, "lost_after_s": 60}


def rollout_steps(demo: Demo, fleet: Fleet, releases: FleetReleases) -> None:
    base, good, bad = releases.base, releases.good, releases.bad
    demo.step("Roll out a new release in waves: canary first, gates on install health and "
              "output drift")
    rollout_id = _create_rollout(demo, good, base, on_failure="pause")
    view = _watch_rollout(demo, rollout_id)
    demo.cli("rollout", "show", str(rollout_id), "--decisions", env=demo.cli_env)
    if view["status"] != "completed":
        raise DemoError(f"rollout {rollout_id} of {good.version} ended {view['status']}, "
                        "not completed (its gates and decisions are above)")
    for agent in fleet.agents:
        beat = wait_for_heartbeat(demo, agent, good.version)
        demo.show(f"{agent.name}: serving digits {good.version} (heartbeat), p95 "
                  f"{ms(beat.get('latency_ms'))}")

    demo.step("Roll out a release whose outputs are shifted: the output-drift gate stops it "
              "at the canary and rolls it back")
    rollout_id = _create_rollout(demo, bad, good, on_failure="rollback")
    view = _watch_rollout(demo, rollout_id)
    demo.cli("rollout", "show", str(rollout_id), "--decisions", env=demo.cli_env)
    failed = [g for g in view["gates"] if g["status"] == "fail"]
    if view["status"] != "rolled_back" or not failed:
        raise DemoError(f"rollout {rollout_id} of {bad.version} ended {view['status']}; "
                        "the demo expected its output-drift gate to roll it back")
    for gate in failed:
        demo.show(f"failed gate {gate['name']}: {gate['value']:.3f} > {gate['threshold']}")
    canaries = {d["device_id"] for d in demo.api(
        "GET", f"/rollouts/{rollout_id}/devices?wave=0", quiet=True)["items"]}
    for agent in fleet.agents:
        if agent.device_id in canaries:
            wait_for_heartbeat(demo, agent, good.version)
            demo.show(f"{agent.name} (the canary) is back on digits {good.version}; the "
                      f"other {len(fleet.agents) - 1} never saw {bad.version}")


def _create_rollout(demo: Demo, release: Release, current: Release, *,
                    on_failure: str) -> int:
    out = demo.cli("rollout", "create", "--model", "digits", "--version", release.version,
                   "--from-version", current.version, "--group", FLEET_GROUP,
                   "--waves", "0.2,1", "--bake", "3", "--max-extension", "60",
                   "--on-failure", on_failure, "--gates", json.dumps(ROLLOUT_GATES),
                   "--name", f"digits {release.version}", env=demo.cli_env)
    return int(out.splitlines()[0])


def _watch_rollout(demo: Demo, rollout_id: int) -> dict[str, Any]:
    """Poll the rollout until it is no longer running; print each change of state."""
    demo.say(f"   (watching rollout {rollout_id}: what `edgefleet rollout show "
             f"{rollout_id} --watch` prints, one line per change)")
    return demo.watch(f"/rollouts/{rollout_id}", lambda view: {"progress": _progress(view)},
                      lambda view: view["status"] != "running", ROLLOUT_TIMEOUT_S,
                      f"rollout {rollout_id}")


def _progress(view: dict[str, Any]) -> str:
    states = ", ".join(f"{k} {v}" for k, v in sorted(view["device_states"].items()))
    line = f"{view['status']}, wave {view['wave'] + 1}/{view['wave_count']} ({states})"
    waiting = [g["name"] for g in view["gates"] if g["status"] == "insufficient"]
    failed = [g["name"] for g in view["gates"] if g["status"] == "fail"]
    if failed:
        line += f"; failed: {', '.join(failed)}"
    elif waiting and view["status"] == "running":
        line += f"; gathering data for {', '.join(waiting)}"
    return line
