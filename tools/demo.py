"""The edgefleet demo: one narrated run through everything that exists today.

It runs the real ``edgefleet`` commands a user would type (echoed as ``$ edgefleet ...``)
and the real JSON API calls, on real parts: a digits classifier trained with
scikit-learn, onnxruntime, a fleet server process with its embedded MQTT broker, and a
device that enrolls over HTTP and connects to the broker with its own credentials, then
a small fleet of ``edgefleet agent run`` daemons serving a load generator, sending their
telemetry through the embedded broker and taking two staged rollouts: one that completes
and one that the output-drift gate stops at the canary and rolls back.
Nothing is mocked; a failing step stops the demo with the command's own error, and every
process the demo started is stopped (SIGTERM) before it returns.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tools.errors import ToolError

Say = Callable[[str], None]
SERVER_START_TIMEOUT_S = 60.0
AGENT_START_TIMEOUT_S = 60.0
ROLLOUT_TIMEOUT_S = 150.0  # a rollout ends well before: bake 3 s, at most 60 s of extension
FLEET_GROUP = "scanners"
FLEET_SIZE = 3
# Gate thresholds of the demo's rollouts (the others keep the server's defaults). Nobody
# sends labels back in the demo, so the accuracy gate is off; on a shared 2-core machine
# the p95 of a 0.1 ms model call is scheduling noise (ratios of 7 seen between one device
# and the others' median), so the latency gate is off too; a device is lost after 60 s.
# 400 predictions per side keep the PSI of two samples of the same data (the largest of
# 64 input features) near 0.07, well below the 0.25 limit; 150 gave 0.15.
ROLLOUT_GATES: dict[str, Any] = {"min_predictions": 400, "max_latency_p95_ratio": None,
                                 "max_accuracy_drop": None, "lost_after_s": 60}
HEARTBEAT_TIMEOUT_S = 90.0
LOAD_BATCH = 32  # digits per request of the load generator
_READY = re.compile(r"listening on (http://\S+)")


class DemoError(ToolError):
    """A demo step failed; the message names the step and the cause."""


@dataclass(frozen=True)
class DemoOptions:
    """How the demo runs.

    Attributes:
        workdir: where models, the server's data dir and the device state go (a new
            temporary folder when None; kept afterwards so you can look around).
        keep_running: leave the fleet server running at the end until Ctrl-C.
        http_port / mqtt_port: fixed ports for the server (free ones when None).
    """

    workdir: Path | None = None
    keep_running: bool = False
    http_port: int | None = None
    mqtt_port: int | None = None


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Demo:
    def __init__(self, work: Path, say: Say) -> None:
        self.work = work
        self.say = say
        self.steps = 0
        self.api_url = ""
        self.api_token = ""
        self.cli_env: dict[str, str] = {}  # EDGEFLEET_SERVER / EDGEFLEET_API_TOKEN

    # -- narration ------------------------------------------------------------------
    def step(self, title: str) -> None:
        self.steps += 1
        self.say(f"\n== {self.steps}. {title}")

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            self.say(f"   {line}")

    def cli(self, *args: str, show: bool = True, env: dict[str, str] | None = None) -> str:
        """Run ``edgefleet ARGS`` as a user would; return its stdout."""
        shown = " ".join(_quote(a) for a in args)
        self.say(f"$ edgefleet {shown}")
        proc = subprocess.run(
            [sys.executable, "-m", "edgefleet.tools.cli", *args],
            capture_output=True, text=True, cwd=self.work, check=False,
            env={**os.environ, **(env or {})},
        )
        if proc.returncode != 0:
            raise DemoError(f"`edgefleet {shown}` failed: {proc.stderr.strip() or proc.stdout}")
        if show:
            self.show(proc.stdout)
        return proc.stdout

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, *,
            quiet: bool = False) -> Any:
        """Call the fleet server's JSON API with the demo's API token."""
        if not quiet:
            self.say(f"$ {method} /api/v1{path}" + (f" {json.dumps(body)}" if body else ""))
        request = urllib.request.Request(  # noqa: S310 - http(s) URL of the configured fleet server
            f"{self.api_url}/api/v1{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.api_token}",
                     "Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http(s) URL of the configured fleet server
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise DemoError(f"{method} {path} answered {e.code}: {e.read()[:300]!r}") from None
        except OSError as e:  # refused, reset, timed out
            raise DemoError(f"{method} {path}: no answer from the fleet server ({e})") from None


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else repr(arg)


def run_demo(options: DemoOptions, say: Say) -> Path:
    """Run the whole demo, narrating through ``say``; return the work folder.

    Raises:
        DemoError: a step failed (its command's error is in the message).
    """
    work = options.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    demo = _Demo(work, say)
    say(f"edgefleet demo: working in {work}")
    models = _model_steps(demo)
    with _fleet_server(demo, options) as server_dir:
        _fleet_steps(demo, server_dir, models)
        releases = _fleet_release_steps(demo, server_dir, models)
        with _agent_fleet(demo, releases) as fleet:
            _rollout_steps(demo, fleet, releases)
            # The federated round joins here: it trains on these running agents (their
            # agent.toml comes from _agent_toml) and its result can go out as a rollout.
            _audit_step(demo)
            if options.keep_running:
                say(f"\nThe fleet server keeps running at {demo.api_url} (API tokens in "
                    f"{work}/api-token-*), and so do the agents at "
                    f"{', '.join(a.url for a in fleet.agents)}. Ctrl-C stops them all.")
                _wait_for_interrupt()
    say("\nDemo finished: every step above ran on real parts.")
    return work


# -- models -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Models:
    float_model: Path
    int8_model: Path
    eval_x: Path
    eval_y: Path


def _model_steps(demo: _Demo) -> _Models:
    from edgefleet.tools.modelgen.digits import build_digits_models

    demo.step("Train a digits classifier (scikit-learn's bundled 8x8 digits) and export ONNX")
    art = build_digits_models(demo.work / "models")
    demo.show(f"float model: {art.float_model} (held-out accuracy {art.mlp_accuracy:.1%})")

    demo.step("Inspect the model: signature, operators, size")
    demo.cli("model", "inspect", str(art.float_model))

    demo.step("Quantize to int8 (static, calibrated), refusing it if accuracy drops > 1 point")
    int8 = demo.work / "models" / "digits.int8.onnx"
    demo.cli("model", "quantize", str(art.float_model), str(int8), "--mode", "static",
             "--calibration", str(art.calibration), "--eval", str(art.eval_x),
             "--labels", str(art.eval_y), "--max-accuracy-drop", "1")

    demo.step("Benchmark float32 against int8 on this machine")
    for path in (art.float_model, int8):
        demo.cli("model", "bench", str(path), "--iterations", "300", "--warmup", "30")

    demo.step("Predict with the agent runtime on three held-out digits")
    x = np.load(art.eval_x)[:3]
    y = np.load(art.eval_y)[:3]
    sample = demo.work / "models" / "three-digits.npy"
    np.save(sample, x)
    out = json.loads(demo.cli("agent", "predict", "--model", str(int8), "--input", str(sample),
                              show=False))
    for name, values in out.items():
        arr = np.asarray(values)
        if arr.ndim == 2 and arr.shape[1] > 1:
            demo.show(f"{name}: predicted {arr.argmax(axis=1).tolist()}, true {y.tolist()}")
        else:
            demo.show(f"{name}: {arr.tolist()}")
    return _Models(art.float_model, int8, art.eval_x, art.eval_y)


# -- fleet server ---------------------------------------------------------------------------
@contextmanager
def _fleet_server(demo: _Demo, options: DemoOptions) -> Iterator[Path]:
    data_dir = demo.work / "server"
    demo.step("Initialise a fleet server: database, generated secrets, first admin")
    out = demo.cli("server", "init", "--data-dir", str(data_dir), show=False)
    demo.show(re.sub(r"(password[^:]*:\s*)\S+", r"\1******** (hidden in the demo)", out))
    demo.step("Create the update repositories' signing keys (root: 2 of 3, kept offline)")
    demo.cli("keys", "init", "--data-dir", str(data_dir), "--offline-dir",
             str(demo.work / "offline-keys"))

    http_port = options.http_port or free_port()
    mqtt_port = options.mqtt_port or free_port()
    demo.step("Start it: JSON API (waitress), embedded MQTT broker, scheduler")
    args = ["server", "run", "--data-dir", str(data_dir), "--host", "127.0.0.1",
            "--port", str(http_port), "--mqtt-port", str(mqtt_port)]
    demo.say("$ edgefleet " + " ".join(args) + "   (in the background)")
    log_path = demo.work / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.tools.cli", *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=demo.work,
        )
    try:
        demo.api_url = _wait_until_ready(proc, log_path)
        demo.show(f"listening on {demo.api_url}, MQTT on 127.0.0.1:{mqtt_port}; log: {log_path}")
        yield data_dir
    finally:
        _stop(demo, proc, log_path)


def _wait_until_ready(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = _READY.search(text)
        if match:
            return match.group(1).rstrip(")")
        if proc.poll() is not None:
            raise DemoError(f"the fleet server exited with {proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.1)
    raise DemoError(f"the fleet server was not ready after {SERVER_START_TIMEOUT_S:.0f} s")


def _stop(demo: _Demo, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    if proc.poll() is not None:
        return
    demo.step("Stop the fleet server with SIGTERM (clean shutdown)")
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise DemoError(f"the fleet server ignored SIGTERM; see {log_path}") from None
    demo.show(f"exit code {code}")


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _fleet_steps(demo: _Demo, data_dir: Path, models: _Models) -> None:
    demo.step("Create two operator API tokens on the server machine (secrets shown once)")
    demo.api_token = _create_token(demo, data_dir, "uploader")
    reviewer = _create_token(demo, data_dir, "reviewer")
    env = {"EDGEFLEET_API_TOKEN": demo.api_token, "EDGEFLEET_SERVER": demo.api_url}
    demo.cli_env = env
    reviewer_env = {**env, "EDGEFLEET_API_TOKEN": reviewer}

    demo.step("Enroll a device: one-time token, device-generated key pair, own broker login")
    token = demo.api("POST", "/enrollment-tokens", {"ttl_s": 600, "note": "demo device"})
    device_dir = demo.work / "device-1"
    demo.cli("agent", "enroll", "--server", demo.api_url, "--token", token["token"],
             "--state-dir", str(device_dir), "--name", "demo-device-1")
    demo.say("$ edgefleet agent enroll ... (the same token again)")
    reuse = subprocess.run(
        [sys.executable, "-m", "edgefleet.tools.cli", "agent", "enroll", "--server",
         demo.api_url, "--token", token["token"], "--state-dir", str(demo.work / "device-x")],
        capture_output=True, text=True, check=False,
    )
    demo.show(f"refused (exit {reuse.returncode}): {reuse.stderr.strip()}")

    demo.step("The device connects to the embedded broker with its own credentials")
    _broker_check(demo, device_dir)

    demo.step("Register the float model, stage it, approve it, put it in production")
    demo.cli("model", "push", str(models.float_model), "--name", "digits", "--version", "1.0.0",
             env=env)
    demo.cli("model", "promote", "digits", "1.0.0", "--to", "staging",
             "--reason", "97% held-out accuracy", env=env)
    demo.say("   (approval needs a second person: the uploader may not approve its own upload)")
    demo.cli("model", "approve", "digits", "1.0.0",
             "--reason", "accuracy checked on held-out digits", env=reviewer_env)
    demo.cli("model", "promote", "digits", "1.0.0", "--to", "production",
             "--reason", "approved", env=env)

    demo.step("Release the int8 model over the air: a signed bundle with drift reference")
    releases = demo.work / "releases"
    releases.mkdir(exist_ok=True)
    bundle = demo.cli("release", "build", str(models.int8_model), "--name", "digits",
                      "--version", "1.1.0", "--parent", "1.0.0",
                      "--baseline", str(models.float_model), "--reference", str(models.eval_x),
                      "--eval", str(models.eval_x), "--labels", str(models.eval_y),
                      "-o", str(releases)).strip().splitlines()[-1]
    demo.cli("release", "publish", bundle, "--data-dir", str(data_dir),
             "--offline-dir", str(demo.work / "offline-keys"))
    device_id = _enrolled_id(device_dir)
    demo.api("PUT", f"/devices/{device_id}/assignment", {"model": "digits", "version": "1.1.0"})

    demo.step("The device verifies both signed repositories, installs, warms up, switches")
    demo.cli("agent", "update", "--state-dir", str(device_dir), "--once")
    view = _wait_for_update_state(demo, device_id, "committed")
    demo.show(f"the server sees {device_id}: {view['state']} "
              f"({view['assignment']['target']})")


def _audit_step(demo: _Demo) -> None:
    demo.step("Every change is in the append-only audit log")
    audit = demo.api("GET", "/audit?limit=50")
    for entry in reversed(audit["items"]):
        demo.show(f"{entry['ts']}  {entry['actor']['name']:<20} {entry['action']:<28} "
                  f"{entry['target_type']}:{entry['target_id']}")


# -- a fleet of agent daemons and staged rollouts -----------------------------------------
@dataclass(frozen=True)
class _Release:
    version: str
    parent: str  # the version it derives from (lineage in the bundle's manifest)
    model: Path
    note: str


@dataclass(frozen=True)
class _FleetReleases:
    base: _Release  # what the fleet's devices run when they start
    good: _Release  # rolled out to every device
    bad: _Release  # stopped at the canary by the output-drift gate
    eval_x: Path


@dataclass(frozen=True)
class _Agent:
    name: str
    device_id: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class _Fleet:
    agents: list[_Agent] = field(default_factory=list)
    calls: int = 0  # predict calls the load generator got answers to
    digits: int = 0  # digits classified in them
    failed: int = 0  # calls that failed (none expected: a model swap keeps serving)


def _fleet_release_steps(demo: _Demo, data_dir: Path, models: _Models) -> _FleetReleases:
    demo.step("Build the fleet's releases: one output each, as the agents' drift binning "
              "needs")
    folder = demo.work / "models" / "fleet"
    folder.mkdir(parents=True, exist_ok=True)
    base = _Release("1.2.0", "1.0.0", folder / "digits-1.2.0.onnx",
                    "the float network with its probabilities output only; the new "
                    "devices ship with it")
    good = _Release("1.3.0", "1.2.0", folder / "digits-1.3.0.onnx",
                    "its int8 weights (dynamic quantization: the outputs stay float)")
    bad = _Release("1.4.0", "1.2.0", folder / "digits-1.4.0.onnx",
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
    return _FleetReleases(base, good, bad, models.eval_x)


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
def _agent_fleet(demo: _Demo, releases: _FleetReleases) -> Iterator[_Fleet]:
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
    fleet = _Fleet()
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
            beat = _wait_for_heartbeat(demo, agent, base.version)
            demo.show(f"{agent.name} ({agent.device_id}): heartbeat over MQTT, serving "
                      f"digits {base.version}, {beat['predictions']} predict calls so far, "
                      f"p95 {_ms(beat.get('latency_ms'))}")
        yield fleet
    finally:
        stop.set()
        if load.is_alive():
            load.join(timeout=15)
        if fleet.agents:
            _stop_agents(demo, fleet)


def _start_agent(demo: _Demo, name: str, release: _Release, profile: Path) -> _Agent:
    token = demo.api("POST", "/enrollment-tokens",
                     {"ttl_s": 600, "group": FLEET_GROUP, "note": name}, quiet=True)
    folder = demo.work / name
    state = folder / "state"
    demo.cli("agent", "enroll", "--server", demo.api_url, "--token", token["token"],
             "--state-dir", str(state), "--name", name, show=False)
    device_id = _enrolled_id(state)
    port = free_port()
    config = folder / "agent.toml"
    config.write_text(_agent_toml(state, port, release, profile))
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
    return _Agent(name, device_id, f"http://127.0.0.1:{port}", proc, log)


def _agent_toml(state: Path, port: int, release: _Release, profile: Path) -> str:
    """The daemon's configuration: short windows and heartbeats so the demo is quick
    (2 s windows: the embedded broker and ingestion share a small machine). A federated
    round adds its ``[federated]`` table here (docs/agent-federated.md)."""
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
    ])


def _wait_healthy(agent: _Agent) -> None:
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


def _generate_load(fleet: _Fleet, eval_x: Path, stop: threading.Event) -> None:
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
        stop.wait(0.05)


def _models_in_heartbeat(demo: _Demo, device_id: str) -> dict[str, Any]:
    """The ``models`` of the device's last heartbeat ({} before the first one)."""
    try:
        telemetry = demo.api("GET", f"/devices/{device_id}/telemetry", quiet=True)
    except DemoError:  # 404: nothing ingested from it yet
        return {}
    beat = (telemetry or {}).get("heartbeat") or {}
    models: dict[str, Any] = (beat.get("body") or {}).get("models") or {}
    return models


def _wait_for_heartbeat(demo: _Demo, agent: _Agent, version: str,
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


def _ms(latency: dict[str, Any] | None) -> str:
    p95 = (latency or {}).get("p95")
    return "-" if p95 is None else f"{p95:.2f} ms"


def _stop_agents(demo: _Demo, fleet: _Fleet) -> None:
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


def _rollout_steps(demo: _Demo, fleet: _Fleet, releases: _FleetReleases) -> None:
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
        beat = _wait_for_heartbeat(demo, agent, good.version)
        demo.show(f"{agent.name}: serving digits {good.version} (heartbeat), p95 "
                  f"{_ms(beat.get('latency_ms'))}")

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
            _wait_for_heartbeat(demo, agent, good.version)
            demo.show(f"{agent.name} (the canary) is back on digits {good.version}; the "
                      f"other {len(fleet.agents) - 1} never saw {bad.version}")


def _create_rollout(demo: _Demo, release: _Release, current: _Release, *,
                    on_failure: str) -> int:
    out = demo.cli("rollout", "create", "--model", "digits", "--version", release.version,
                   "--from-version", current.version, "--group", FLEET_GROUP,
                   "--waves", "0.2,1", "--bake", "3", "--max-extension", "60",
                   "--on-failure", on_failure, "--gates", json.dumps(ROLLOUT_GATES),
                   "--name", f"digits {release.version}", env=demo.cli_env)
    return int(out.splitlines()[0])


def _watch_rollout(demo: _Demo, rollout_id: int) -> dict[str, Any]:
    """Poll the rollout until it is no longer running; print each change of state."""
    demo.say(f"   (watching rollout {rollout_id}: what `edgefleet rollout show "
             f"{rollout_id} --watch` prints, one line per change)")
    start = time.monotonic()
    last = ""
    while True:
        try:
            view: dict[str, Any] = demo.api("GET", f"/rollouts/{rollout_id}", quiet=True)
        except DemoError as e:  # a busy server may miss one poll; the deadline still holds
            if time.monotonic() - start > ROLLOUT_TIMEOUT_S:
                raise
            demo.show(f"{time.monotonic() - start:5.1f} s  ({e}; asking again)")
            continue
        line = _progress(view)
        if line != last:
            demo.show(f"{time.monotonic() - start:5.1f} s  {line}")
            last = line
        if view["status"] != "running":
            return view
        if time.monotonic() - start > ROLLOUT_TIMEOUT_S:
            raise DemoError(f"rollout {rollout_id} still running after "
                            f"{ROLLOUT_TIMEOUT_S:.0f} s: {line}")
        time.sleep(1.0)


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


def _enrolled_id(device_dir: Path) -> str:
    return str(json.loads((device_dir / "enrollment.json").read_text())["device_id"])


def _wait_for_update_state(demo: _Demo, device_id: str, state: str) -> dict[str, Any]:
    """The server's view of the device once its reported update state is ``state``."""
    deadline = time.monotonic() + 20
    while True:
        view: dict[str, Any] = demo.api("GET", f"/devices/{device_id}/update", quiet=True)
        if view.get("state") == state or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def _create_token(demo: _Demo, data_dir: Path, name: str) -> str:
    secret = demo.cli("server", "token", "create", "--data-dir", str(data_dir),
                      "--role", "operator", "--name", name, show=False).strip()
    path = demo.work / f"api-token-{name}"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    demo.show(f"{name}: secret stored in {path} (mode 0600)")
    return secret


def _broker_check(demo: _Demo, device_dir: Path) -> None:
    from edgefleet.agent.enroll import load_enrollment

    enrollment = load_enrollment(device_dir)
    broker = enrollment["broker"]
    device_id = enrollment["device_id"]
    topic = f"edgefleet/v1/d/{device_id}/status"
    code = _mqtt_connect(broker["url"], broker["username"], broker["password"], topic)
    demo.show(f"{broker['username']} with its password: {code}; published retained "
              f"'online' to {topic}")
    wrong = _mqtt_connect(broker["url"], broker["username"], "not-the-password", None)
    demo.show(f"{broker['username']} with a wrong password: {wrong}")


def _mqtt_connect(url: str, username: str, password: str, topic: str | None) -> str:
    """Connect once; publish ``online`` to ``topic`` when given; return the CONNACK text."""
    import paho.mqtt.client as mqtt

    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{username}-demo")
    client.username_pw_set(username, password)
    result: dict[str, str] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result["code"] = str(reason)

    client.on_connect = on_connect
    client.connect(host, int(port))
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while "code" not in result and time.monotonic() < deadline:
            time.sleep(0.05)
        if topic and result.get("code") == "Success":
            client.publish(topic, _online_status(username), qos=1,
                           retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return result.get("code", "no answer")


def _online_status(device_id: str) -> bytes:
    """A retained ``status`` message in the MQTT contract's envelope, as the agent sends."""
    from edgefleet.agent.telemetry.envelope import Channel, Envelope, Status, encode

    return encode(Envelope(type=Channel.STATUS, device=device_id, bd=1, seq=1,
                           ts=time.time(), historical=False,
                           body={"state": Status.ONLINE.value}))
