"""Real processes: ``edgefleet server init`` + ``edgefleet server run`` over real HTTP/MQTT.

Free loopback ports only (a system Mosquitto may hold 1883). Waits are safety nets with
generous limits, never timing assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import BrokerEndpoint, free_port

CLI = [sys.executable, "-m", "edgefleet.tools.cli"]
NEW_PASSWORD = "a long new admin password"
WAIT_S = 60.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update({"EDGEFLEET_SESSION_COOKIE_SECURE": "false", "PYTHONUNBUFFERED": "1", **extra})
    return env


def init_data_dir(data_dir: Path) -> str:
    """Run ``server init``; returns the printed one-time admin password."""
    out = subprocess.run([*CLI, "server", "init", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, env=_env(), timeout=WAIT_S, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("One-time password"))
    return line.rsplit(" ", 1)[1]


@dataclass
class ServerProcess:
    """A running ``edgefleet server run`` whose combined output is collected."""

    proc: subprocess.Popen[str]
    port: int
    mqtt_port: int
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening on" in line:
                self.ready.set()
        self.ready.set()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def start_server(data_dir: Path, *extra: str, **env: str) -> ServerProcess:
    port, mqtt_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*CLI, "server", "run", "--data-dir", str(data_dir), "--port", str(port),
         "--mqtt-port", str(mqtt_port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(**env))
    server = ServerProcess(proc, port, mqtt_port)
    threading.Thread(target=server._pump, daemon=True).start()
    if not server.ready.wait(WAIT_S) or proc.poll() is not None:
        server.stop()
        raise AssertionError(f"server did not start:\n{server.output}")
    return server


def mqtt_connect(port: int, username: str, password: str) -> int:
    """Connect with credentials; returns the CONNACK reason code value (0 = accepted)."""
    result: list[int] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{username}-{time.time_ns()}")
    client.username_pw_set(username, password)

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        result.append(reason.value)  # type: ignore[attr-defined]
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(WAIT_S), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]


@dataclass
class Running:
    data_dir: Path
    server: ServerProcess
    admin_password: str
    session: requests.Session
    csrf: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("server") / "data"
    one_time = init_data_dir(data_dir)
    server = start_server(data_dir)
    session = requests.Session()
    rv = session.post(f"{server.url}/auth/login",
                      json={"username": "admin", "password": one_time}, timeout=WAIT_S)
    assert rv.status_code == 200, rv.text
    rv = session.post(f"{server.url}/auth/password", timeout=WAIT_S,
                      headers={"X-CSRF-Token": rv.json()["csrf_token"]},
                      json={"old_password": one_time, "new_password": NEW_PASSWORD})
    assert rv.status_code == 200, rv.text
    yield Running(data_dir, server, one_time, session, rv.json()["csrf_token"])
    assert server.stop() == 0, server.output


def test_init_files_are_private(running: Running) -> None:
    assert (running.data_dir / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert not (running.data_dir / "config.toml").exists()


def test_http_api_is_reachable(running: Running) -> None:
    url = running.server.url
    assert requests.get(f"{url}/health", timeout=WAIT_S).json()["status"] == "ok"
    doc = requests.get(f"{url}/openapi.json", timeout=WAIT_S).json()
    assert "/api/v1/users" in doc["paths"]
    rv = requests.get(f"{url}/users", timeout=WAIT_S)
    assert rv.status_code == 401 and rv.json()["error"]["code"] == "unauthorized"
    rv = requests.get(f"http://127.0.0.1:{running.server.port}/nowhere", timeout=WAIT_S)
    assert rv.status_code == 404 and rv.headers["Content-Type"] == "application/json"


def test_one_time_password_no_longer_works(running: Running) -> None:
    rv = requests.post(f"{running.server.url}/auth/login", timeout=WAIT_S,
                       json={"username": "admin", "password": running.admin_password})
    assert rv.status_code == 401


def test_session_and_csrf_over_http(running: Running) -> None:
    url = running.server.url
    rv = running.session.post(f"{url}/users", json={"username": "ops", "role": "operator"},
                              timeout=WAIT_S)
    assert rv.status_code == 403 and rv.json()["error"]["code"] == "csrf_failed"
    rv = running.session.post(f"{url}/users", json={"username": "ops", "role": "operator"},
                              headers={"X-CSRF-Token": running.csrf}, timeout=WAIT_S)
    assert rv.status_code == 201, rv.text


def test_request_size_limit_over_http(running: Running) -> None:
    rv = requests.post(f"{running.server.url}/auth/login", data=b"{" + b" " * (2 << 20) + b"}",
                       headers={"Content-Type": "application/json"}, timeout=WAIT_S)
    assert rv.status_code == 413 and rv.json()["error"]["code"] == "request_too_large"


def test_cli_token_works_against_running_server(running: Running) -> None:
    out = subprocess.run([*CLI, "server", "token", "create", "--role", "viewer", "--name",
                          "demo", "--data-dir", str(running.data_dir)],
                         capture_output=True, text=True, env=_env(), timeout=WAIT_S, check=True)
    secret = out.stdout.strip()
    assert secret.startswith("efa_") and secret not in out.stderr
    headers = {"Authorization": f"Bearer {secret}"}
    rv = requests.get(f"{running.server.url}/auth/whoami", headers=headers, timeout=WAIT_S)
    assert rv.status_code == 200 and rv.json()["actor"]["role"] == "viewer"
    rv = requests.get(f"{running.server.url}/users", headers=headers, timeout=WAIT_S)
    assert rv.status_code == 403
    token_id = out.stderr.split()[1]
    listed = subprocess.run([*CLI, "server", "token", "list", "--data-dir",
                             str(running.data_dir)], capture_output=True, text=True,
                            env=_env(), timeout=WAIT_S, check=True)
    assert token_id in listed.stdout and secret not in listed.stdout
    subprocess.run([*CLI, "server", "token", "revoke", token_id, "--data-dir",
                    str(running.data_dir)], env=_env(), timeout=WAIT_S, check=True,
                   capture_output=True)
    rv = requests.get(f"{running.server.url}/auth/whoami", headers=headers, timeout=WAIT_S)
    assert rv.status_code == 401


def test_embedded_broker_takes_only_known_credentials(running: Running) -> None:
    secrets = json.loads((running.data_dir / "secrets.json").read_text())
    port = running.server.mqtt_port
    assert mqtt_connect(port, secrets["broker_username"], secrets["broker_password"]) == 0
    assert mqtt_connect(port, secrets["broker_username"], "wrong") != 0
    assert mqtt_connect(port, "dev-unknown", "whatever") != 0


def test_enrolled_device_connects_with_its_own_credentials(running: Running) -> None:
    url = running.server.url
    rv = running.session.post(f"{url}/enrollment-tokens", json={"ttl_s": 600},
                              headers={"X-CSRF-Token": running.csrf}, timeout=WAIT_S)
    assert rv.status_code == 201, rv.text
    public_pem = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    rv = requests.post(f"{url}/enroll", json={"token": rv.json()["token"],
                                              "public_key": public_pem}, timeout=WAIT_S)
    assert rv.status_code == 201, rv.text
    broker = rv.json()["broker"]
    assert broker["url"] == f"mqtt://127.0.0.1:{running.server.mqtt_port}"
    device_id = rv.json()["device_id"]
    assert mqtt_connect(running.server.mqtt_port, broker["username"], broker["password"]) == 0
    assert mqtt_connect(running.server.mqtt_port, broker["username"], "forged") != 0

    # A connection the device holds when it is decommissioned is dropped by the server.
    connected, dropped = threading.Event(), threading.Event()
    live = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device_id}-live")
    live.username_pw_set(broker["username"], broker["password"])
    live.on_connect = lambda *_a: connected.set()
    live.on_disconnect = lambda *_a: dropped.set()
    live.connect("127.0.0.1", running.server.mqtt_port)
    live.loop_start()
    try:
        assert connected.wait(WAIT_S), "the device could not connect"
        rv = running.session.post(f"{url}/devices/{device_id}/decommission", json={},
                                  headers={"X-CSRF-Token": running.csrf}, timeout=WAIT_S)
        assert rv.status_code == 200, rv.text
        assert dropped.wait(WAIT_S), "the decommissioned device's connection stayed open"
    finally:
        live.loop_stop()
    assert mqtt_connect(running.server.mqtt_port, broker["username"], broker["password"]) != 0


def _run_fails(args: list[str]) -> str:
    out = subprocess.run([*CLI, "server", "run", *args], capture_output=True, text=True,
                         env=_env(), timeout=WAIT_S, check=False)
    assert out.returncode == 1, out
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_http_port_taken_is_one_clear_line(running: Running) -> None:
    line = _run_fails(["--data-dir", str(running.data_dir), "--port", str(running.server.port),
                       "--mqtt-port", str(free_port())])
    assert line.startswith("Error: ") and "already in use" in line
    assert str(running.server.port) in line


def test_mqtt_port_taken_is_one_clear_line(running: Running) -> None:
    line = _run_fails(["--data-dir", str(running.data_dir), "--port", str(free_port()),
                       "--mqtt-port", str(running.server.mqtt_port)])
    assert line.startswith("Error: ") and "already in use" in line
    assert str(running.server.mqtt_port) in line


def test_uninitialised_data_dir_refused(tmp_path: Path) -> None:
    line = _run_fails(["--data-dir", str(tmp_path / "empty"), "--port", str(free_port())])
    assert "server init" in line


def test_init_twice_refused(running: Running) -> None:
    out = subprocess.run([*CLI, "server", "init", "--data-dir", str(running.data_dir)],
                         capture_output=True, text=True, env=_env(), timeout=WAIT_S,
                         check=False)
    assert out.returncode == 1 and "already initialised" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_logs_no_secret(tmp_path: Path, sig: int) -> None:
    data_dir = tmp_path / "data"
    one_time = init_data_dir(data_dir)
    server = start_server(data_dir, EDGEFLEET_LOG_LEVEL="DEBUG")
    session = requests.Session()
    rv = session.post(f"{server.url}/auth/login", timeout=WAIT_S,
                      json={"username": "admin", "password": one_time})
    csrf = rv.json()["csrf_token"]
    rv = session.post(f"{server.url}/auth/password", headers={"X-CSRF-Token": csrf},
                      json={"old_password": one_time, "new_password": NEW_PASSWORD},
                      timeout=WAIT_S)
    rv = session.post(f"{server.url}/tokens", json={"name": "x"}, timeout=WAIT_S,
                      headers={"X-CSRF-Token": rv.json()["csrf_token"]})
    token = rv.json()["secret"]
    requests.get(f"{server.url}/auth/whoami", headers={"Authorization": f"Bearer {token}"},
                 timeout=WAIT_S)
    secrets = json.loads((data_dir / "secrets.json").read_text())
    assert mqtt_connect(server.mqtt_port, secrets["broker_username"],
                        secrets["broker_password"]) == 0
    assert server.stop(sig) == 0, server.output
    output = server.output
    assert "fleet server stopped" in output and "Traceback" not in output
    for secret in (one_time, NEW_PASSWORD, token, secrets["session_key"],
                   secrets["broker_password"]):
        assert secret not in output


def test_external_broker_instead_of_embedded(tmp_path: Path, mosquitto: BrokerEndpoint) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir)
    server = start_server(data_dir, "--mqtt-url", mosquitto.url)
    try:
        assert f"(MQTT {mosquitto.url})" in server.output
        assert requests.get(f"{server.url}/health", timeout=WAIT_S).status_code == 200
        with pytest.raises(OSError):  # nothing listens on the embedded broker's port
            mqtt_connect(server.mqtt_port, "x", "y")
    finally:
        assert server.stop() == 0, server.output


def test_device_telemetry_reaches_the_running_server(running: Running, tmp_path: Path) -> None:
    """`server run` ingests what an enrolled agent publishes through the embedded broker."""
    from edgefleet.agent.enroll import enroll
    from edgefleet.agent.telemetry import Channel, TelemetryClient, TelemetryConfig

    url = running.server.url
    rv = running.session.post(f"{url}/enrollment-tokens", json={"ttl_s": 600},
                              headers={"X-CSRF-Token": running.csrf}, timeout=WAIT_S)
    assert rv.status_code == 201, rv.text
    result = enroll(url.removesuffix("/api/v1"), rv.json()["token"], tmp_path / "device")
    client = TelemetryClient.from_enrollment(tmp_path / "device",
                                             config=TelemetryConfig(heartbeat_s=0.5),
                                             models={"clf": "1.0.0"})
    client.start()
    try:
        client.publish(Channel.EVENTS, {"events": [{"ts": 1.0, "kind": "state",
                                                    "state": "idle"}]})
        deadline = time.monotonic() + WAIT_S
        view: dict[str, object] = {}
        while time.monotonic() < deadline:
            rv = running.session.get(f"{url}/devices/{result.device_id}/telemetry",
                                     timeout=WAIT_S)
            view = rv.json() if rv.status_code == 200 else {}
            if view and view["presence"]["state"] == "online" and view["heartbeat"]:
                break
            time.sleep(0.2)
        assert view["presence"]["state"] == "online", view
        assert view["inventory"]["models"] == {"clf": "1.0.0"}
    finally:
        client.stop()
