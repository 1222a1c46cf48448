"""The fleet server: start and stop it, enroll a device, release to it, the audit log."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgefleet.tools.demo.core import Demo, DemoError, DemoOptions, free_port
from edgefleet.tools.demo.models import Models

SERVER_START_TIMEOUT_S = 60.0
_READY = re.compile(r"listening on (http://\S+)")


@contextmanager
def fleet_server(demo: Demo, options: DemoOptions) -> Iterator[Path]:
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


def _stop(demo: Demo, proc: subprocess.Popen[bytes], log_path: Path) -> None:
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


def wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def fleet_steps(demo: Demo, data_dir: Path, models: Models) -> None:
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
    device_id = enrolled_id(device_dir)
    demo.api("PUT", f"/devices/{device_id}/assignment", {"model": "digits", "version": "1.1.0"})

    demo.step("The device verifies both signed repositories, installs, warms up, switches")
    demo.cli("agent", "update", "--state-dir", str(device_dir), "--once")
    view = wait_for_update_state(demo, device_id, "committed")
    demo.show(f"the server sees {device_id}: {view['state']} "
              f"({view['assignment']['target']})")


def audit_step(demo: Demo) -> None:
    demo.step("Every change is in the append-only audit log")
    audit = demo.api("GET", "/audit?limit=50")
    for entry in reversed(audit["items"]):
        demo.show(f"{entry['ts']}  {entry['actor']['name']:<20} {entry['action']:<28} "
                  f"{entry['target_type']}:{entry['target_id']}")



def enrolled_id(device_dir: Path) -> str:
    return str(json.loads((device_dir / "enrollment.json").read_text())["device_id"])


def wait_for_update_state(demo: Demo, device_id: str, state: str) -> dict[str, Any]:
    """The server's view of the device once its reported update state is ``state``."""
    deadline = time.monotonic() + 20
    while True:
        view: dict[str, Any] = demo.api("GET", f"/devices/{device_id}/update", quiet=True)
        if view.get("state") == state or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def _create_token(demo: Demo, data_dir: Path, name: str) -> str:
    secret = demo.cli("server", "token", "create", "--data-dir", str(data_dir),
                      "--role", "operator", "--name", name, show=False).strip()
    path = demo.work / f"api-token-{name}"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    demo.show(f"{name}: secret stored in {path} (mode 0600)")
    return secret


def _broker_check(demo: Demo, device_dir: Path) -> None:
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
