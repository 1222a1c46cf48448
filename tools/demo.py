"""The edgefleet demo: one narrated run through everything that exists today.

It runs the real ``edgefleet`` commands a user would type (echoed as ``$ edgefleet ...``)
and the real JSON API calls, on real parts: a digits classifier trained with
scikit-learn, onnxruntime, a fleet server process with its embedded MQTT broker, and a
device that enrolls over HTTP and connects to the broker with its own credentials.
Nothing is mocked; a failing step stops the demo with the command's own error.
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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tools.errors import ToolError

Say = Callable[[str], None]
SERVER_START_TIMEOUT_S = 60.0
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
        if options.keep_running:
            say(f"\nThe fleet server keeps running at {demo.api_url} "
                f"(API tokens in {work}/api-token-*). Ctrl-C stops it.")
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

    demo.step("Every change is in the append-only audit log")
    audit = demo.api("GET", "/audit?limit=50")
    for entry in reversed(audit["items"]):
        demo.show(f"{entry['ts']}  {entry['actor']['name']:<20} {entry['action']:<28} "
                  f"{entry['target_type']}:{entry['target_id']}")


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
            client.publish(topic, json.dumps({"v": 1, "body": "online"}), qos=1,
                           retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return result.get("code", "no answer")
