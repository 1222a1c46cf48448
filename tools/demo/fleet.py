"""A fleet of agent daemons under live traffic, and the releases they take."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tools.demo.core import Demo, DemoError, free_port
from edgefleet.tools.demo.models import Models
from edgefleet.tools.demo.server import enrolled_id

AGENT_START_TIMEOUT_S = 60.0
FLEET_GROUP = "scanners"
FLEET_SIZE = 3
HEARTBEAT_TIMEOUT_S = 90.0
LOAD_BATCH = 32  # digits per request of the load generator


@dataclass(frozen=True)
class Release:
    version: str
    parent: str  # the version it derives from (lineage in the bundle's manifest)
    model: Path
    note: str


@dataclass(frozen=True)
class FleetReleases:
    base: Release  # what the fleet's devices run when they start
    good: Release  # rolled out to every device
    bad: Release  # stopped at the canary by the output-drift gate
    eval_x: Path


@dataclass(frozen=True)
class Agent:
    name: str
    device_id: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    agents: list[Agent] = field(default_factory=list)
    calls: int = 0  # predict calls the load generator got answers to
    digits: int = 0  # digits classified in them
    failed: int = 0  # calls that failed (none expected: a model swap keeps serving)
    load_pause_s: float = 0.05  # the load generator's pause between two rounds of calls


def fleet_release_steps(demo: Demo, data_dir: Path, models: Models) -> FleetReleases:
    demo.step("Build the fleet's releases: one output each, as the agents' drift binning "
              "needs")
    folder = demo.work / "models" / "fleet"
    folder.mkdir(parents=True, exist_ok=True)
    base = Release("1.2.0", "1.0.0", folder / "digits-1.2.0.onnx",
                    "the float network with its probabilities output only; the new "
                    "devices ship with it")
    good = Release("1.3.0", "1.2.0", folder / "digits-1.3.0.onnx",
                    "its int8 weights (dynamic quantization: the outputs stay float)")
    bad = Release("1.4.0", "1.2.0", folder / "digits-1.4.0.onnx",
                   "shifted outputs (simulated: class 8's output bias raised by 6)")
    _probabilities_only(models.float_model, base.model)
    # Not the static int8 model of 1.1.0: its uint8-quantized output rounds the small
    # probabilities to 0, and on the float reference's quantile bins the output-drift
    # gate sees that as a different distribution (PSI ~7 measured), so it would stop.
    demo.cli("model", "quantize", str(base.model), str(good.model), "--mode", "dynamic",
             "--eval", str(models.eval_x), "--labels", str(models.eval_y),
             "--max-accuracy-drop", "1")
    _shift_output_bias(base.model, bad.model, digit=8, by=6.0)
    x, y = np.load(models.eval_x), np.load(models.eval_y)
    for release in (base, good, bad):
        accuracy, eights = _score(release.model, x, y)
        demo.show(f"{release.version}: {release.note}; held-out accuracy {accuracy:.1%}, "
                  f"says 8 for {eights:.0%} of the digits")

    releases = demo.work / "releases"
    for release in (base, good, bad):
        bundle = demo.cli("release", "build", str(release.model), "--name", "digits",
                          "--version", release.version, "--parent", release.parent,
                          "--reference", str(models.eval_x), "--eval", str(models.eval_x),
                          "--labels", str(models.eval_y), "-o", str(releases)
                          ).strip().splitlines()[-1]
        demo.cli("release", "publish", bundle, "--data-dir", str(data_dir),
                 "--offline-dir", str(demo.work / "offline-keys"))
    for release in (base, good, bad):
        demo.cli("model", "promote", "digits", release.version, "--to", "staging",
                 "--reason", "fleet demo", env=demo.cli_env)
    return FleetReleases(base, good, bad, models.eval_x)


def _probabilities_only(src: Path, dst: Path) -> None:
    """The model with its ``probabilities`` output only (``label`` is its argmax)."""
    import onnx.utils

    onnx.utils.extract_model(str(src), str(dst), ["input"], ["probabilities"])


def _shift_output_bias(src: Path, dst: Path, *, digit: int, by: float) -> None:
    """A copy of ``src`` whose logit for ``digit`` is ``by`` higher (the bias before the
    softmax): a model that installs and runs fine and predicts that digit too often."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in graph.initializer}
    softmax = next((n for n in graph.node if n.op_type == "Softmax"), None)
    add = producers.get(softmax.input[0]) if softmax is not None else None
    bias_name = next((n for n in add.input if n in initializers), None) if add else None
    if add is None or add.op_type != "Add" or bias_name is None:
        raise DemoError(f"{src}: no Add with a bias before the Softmax to shift")
    bias = numpy_helper.to_array(initializers[bias_name]).copy()
    bias[..., digit] += by
    initializers[bias_name].CopyFrom(numpy_helper.from_array(bias, bias_name))
    onnx.save(model, str(dst))


def _score(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Held-out accuracy and the share of predictions that are an 8."""
    from edgefleet.agent.runtime import load_model

    with load_model(path) as runner:
        predicted = np.asarray(runner.predict({"input": x})["probabilities"]).argmax(axis=1)
    return float((predicted == y).mean()), float((predicted == 8).mean())


@contextmanager
def agent_fleet(demo: Demo, releases: FleetReleases) -> Iterator[Fleet]:
    """Enroll and start the agent daemons and the load generator; stop them all after."""
    demo.step(f"Start {FLEET_SIZE} more devices running the agent daemon (local predict API, "
              "telemetry over MQTT, over-the-air updates)")
    demo.api("POST", "/device-groups", {"name": FLEET_GROUP,
                                        "description": "the demo's agent daemons"})
    base = releases.base
    record = demo.api("GET", f"/models/digits/versions/{base.version}", quiet=True)
    profile = demo.work / "models" / "fleet" / f"digits-{base.version}.profile.json"
    profile.write_text(json.dumps(record["reference_profile"]))
    demo.show(f"drift binning: the reference profile of {base.version} ({profile.name}); "
              "later versions are compared on the same bins")
    fleet = Fleet()
    stop = threading.Event()
    load = threading.Thread(target=_generate_load, args=(fleet, releases.eval_x, stop),
                            name="demo-load", daemon=True)
    try:
        for i in range(1, FLEET_SIZE + 1):
            fleet.agents.append(_start_agent(demo, f"scanner-{i}", base, profile))
        for agent in fleet.agents:
            _wait_healthy(agent)
        demo.show(f"{len(fleet.agents)} agent daemons answer on /v1/health")

        demo.step("Local applications call the agents; their telemetry reaches the fleet "
                  "server through the embedded broker")
        load.start()
        demo.show(f"a load generator posts {LOAD_BATCH} held-out digits at a time to each "
                  "agent's POST /v1/predict")
        for agent in fleet.agents:
            beat = wait_for_heartbeat(demo, agent, base.version)
            demo.show(f"{agent.name} ({agent.device_id}): heartbeat over MQTT, serving "
                      f"digits {base.version}, {beat['predictions']} predict calls so far, "
                      f"p95 {ms(beat.get('latency_ms'))}")
        yield fleet
    finally:
        stop.set()
        if load.is_alive():
            load.join(timeout=15)
        if fleet.agents:
            _stop_agents(demo, fleet)


def _start_agent(demo: Demo, name: str, release: Release, profile: Path) -> Agent:
    token = demo.api("POST", "/enrollment-tokens",
                     {"ttl_s": 600, "group": FLEET_GROUP, "note": name}, quiet=True)
    folder = demo.work / name
    state = folder / "state"
    demo.cli("agent", "enroll", "--server", demo.api_url, "--token", token["token"],
             "--state-dir", str(state), "--name", name, show=False)
    device_id = enrolled_id(state)
    port = free_port()
    config = folder / "agent.toml"
    config.write_text(agent_toml(state, port, release, profile))
    first = name.endswith("-1")
    if first:
        demo.show(f"{config}:")
        demo.show("  " + config.read_text().replace("\n", "\n  "))
    log = folder / "agent.log"
    demo.say(f"$ edgefleet agent run --config {config}   (in the background, log: {log})")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.tools.cli", "agent", "run", "--config",
             str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=demo.work)
    demo.show(f"{name}: device {device_id} in group {FLEET_GROUP}, predict API on "
              f"127.0.0.1:{port}")
    return Agent(name, device_id, f"http://127.0.0.1:{port}", proc, log)


def agent_toml(state: Path, port: int, release: Release, profile: Path) -> str:
    """The daemon's configuration: short windows and heartbeats so the demo is quick
    (2 s windows: the embedded broker and ingestion share a small machine). The
    ``[federated]`` table lets the daemon run a SuperNode once its application labelled
    enough predictions (docs/agent-federated.md); until then it stays ``ineligible``."""
    return "\n".join([
        f"state_dir = {json.dumps(str(state))}",
        f'listen = "127.0.0.1:{port}"',
        "window_s = 2  # drift summary windows",
        "heartbeat_s = 1",
        "",
        "[telemetry]",
        "enabled = true  # to the broker and with the login from enrollment.json",
        "",
        "[updates]",
        "enabled = true",
        'model = "digits"',
        "interval_s = 2",
        "",
        "[[models]]",
        'name = "digits"',
        f"path = {json.dumps(str(release.model))}",
        f'version = "{release.version}"',
        f"reference_profile = {json.dumps(str(profile))}",
        "sample_rate = 0.01",
        "",
        "[federated]",
        "enabled = true  # joins the fleet server's federation (no superlink/ca_cert given)",
        "min_examples = 100  # labelled examples before the SuperNode starts",
        "max_load_per_cpu = 0  # never 'busy': the demo shares a small machine",
        "refresh_s = 2  # re-export the labelled feedback every 2 s (default 300)",
        "",
    ])


def _wait_healthy(agent: Agent) -> None:
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            raise DemoError(f"the agent {agent.name} exited with {agent.proc.returncode}:\n"
                            f"{agent.log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{agent.url}/v1/health", timeout=2) as response:  # noqa: S310 - the agent's loopback URL
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DemoError(f"the agent {agent.name} did not answer after "
                    f"{AGENT_START_TIMEOUT_S:.0f} s; see {agent.log}")


def _generate_load(fleet: Fleet, eval_x: Path, stop: threading.Event) -> None:
    """Local applications: every agent gets a steady stream of held-out digits."""
    x = np.load(eval_x)
    rng = np.random.default_rng(7)
    agents = tuple(fleet.agents)
    while not stop.is_set():
        for agent in agents:
            rows = x[rng.integers(0, len(x), size=LOAD_BATCH)].tolist()
            request = urllib.request.Request(  # noqa: S310 - the agent's loopback URL
                f"{agent.url}/v1/predict", method="POST",
                data=json.dumps({"model": "digits", "inputs": {"input": rows}}).encode(),
                headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the agent's loopback URL
                    response.read()
                fleet.calls += 1
                fleet.digits += len(rows)
            except OSError:
                fleet.failed += 1
        stop.wait(fleet.load_pause_s)


def _models_in_heartbeat(demo: Demo, device_id: str) -> dict[str, Any]:
    """The ``models`` of the device's last heartbeat ({} before the first one)."""
    try:
        telemetry = demo.api("GET", f"/devices/{device_id}/telemetry", quiet=True)
    except DemoError:  # 404: nothing ingested from it yet
        return {}
    beat = (telemetry or {}).get("heartbeat") or {}
    models: dict[str, Any] = (beat.get("body") or {}).get("models") or {}
    return models


def wait_for_heartbeat(demo: Demo, agent: Agent, version: str,
                        timeout_s: float = HEARTBEAT_TIMEOUT_S) -> dict[str, Any]:
    """The device's heartbeat figures for ``digits`` once it serves ``version`` and has
    served predictions with it."""
    deadline = time.monotonic() + timeout_s
    while True:
        digits = _models_in_heartbeat(demo, agent.device_id).get("digits") or {}
        if digits.get("version") == version and digits.get("predictions"):
            return dict(digits)
        if agent.proc.poll() is not None:
            raise DemoError(f"the agent {agent.name} exited; see {agent.log}")
        if time.monotonic() > deadline:
            raise DemoError(f"no heartbeat of {agent.name} serving digits {version} after "
                            f"{timeout_s:.0f} s (last: {digits or 'none'}); see {agent.log}")
        time.sleep(0.5)


def ms(latency: dict[str, Any] | None) -> str:
    p95 = (latency or {}).get("p95")
    return "-" if p95 is None else f"{p95:.2f} ms"


def _stop_agents(demo: Demo, fleet: Fleet) -> None:
    running = [a for a in fleet.agents if a.proc.poll() is None]
    if running:
        demo.step(f"Stop the {len(running)} agent daemons with SIGTERM (they flush their "
                  "telemetry first)")
    for agent in running:
        agent.proc.send_signal(signal.SIGTERM)
    stubborn = []
    for agent in fleet.agents:
        try:
            code = agent.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait()
            stubborn.append(agent.name)
            continue
        if agent in running:
            demo.show(f"{agent.name}: exit code {code}")
    demo.show(f"the load generator made {fleet.calls:,} predict calls ({fleet.digits:,} "
              f"digits classified); {fleet.failed} failed")
    if stubborn:
        raise DemoError(f"agent(s) {', '.join(stubborn)} ignored SIGTERM and were killed")
