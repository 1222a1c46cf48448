"""Agent enrollment over real HTTP against the real app served by a WSGI server thread."""

from __future__ import annotations

import dataclasses
import json
import queue
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from werkzeug.serving import make_server

from edgefleet.agent.enroll import (
    ENROLLMENT_FILE,
    KEY_FILE,
    AlreadyEnrolledError,
    EnrollmentError,
    EnrollmentRefusedError,
    ServerUnreachableError,
    enroll,
    load_enrollment,
)
from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.broker import EmbeddedBroker
from edgefleet.fleet_server.broker_auth import ServerBrokerAuth
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.devices import device_service
from edgefleet.fleet_server.services import Services
from edgefleet.tools.cli import cli
from tests.conftest import free_port


@dataclass
class LiveServer:
    url: str
    services: Services

    def token(self, ttl_s: int = 600) -> str:
        enrollment = self.services.extras["device_enrollment"]
        _, secret = enrollment.create_token(SYSTEM, ttl_s=ttl_s)
        return str(secret)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    data_dir = tmp_path / "server"
    init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}))
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    services: Services = app.extensions["edgefleet"]
    try:
        yield LiveServer(f"http://127.0.0.1:{httpd.server_port}", services)
    finally:
        httpd.shutdown()
        thread.join()
        services.store.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enroll_stores_identity_with_private_permissions(server: LiveServer, tmp_path: Path):
    state = tmp_path / "state"
    result = enroll(server.url, server.token(), state)
    assert "broker_password" not in repr(result)
    assert mode(state / ENROLLMENT_FILE) == 0o600
    assert mode(state / KEY_FILE) == 0o600
    assert mode(state) == 0o700
    record = load_enrollment(state)
    assert record["device_id"] == result.device_id
    assert record["broker"]["username"] == result.device_id
    assert record["broker"]["url"] == server.services.broker_url
    assert record["update_root"] is None
    assert not [p for p in state.iterdir() if p.name.startswith(".")]  # no temp files left

    # the stored private key matches the public key the server registered
    key = serialization.load_pem_private_key((state / KEY_FILE).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    devices = server.services.extras["devices"]
    assert devices.get_device(result.device_id)["public_key"] == pem
    assert devices.verify_broker_password(result.device_id, record["broker"]["password"])


def test_existing_enrollment_not_overwritten_without_force(server: LiveServer, tmp_path: Path):
    state = tmp_path / "state"
    first = enroll(server.url, server.token(), state)
    token = server.token()
    with pytest.raises(AlreadyEnrolledError):
        enroll(server.url, token, state)
    assert load_enrollment(state)["device_id"] == first.device_id
    second = enroll(server.url, token, state, force=True)  # the token was not spent above
    assert second.device_id != first.device_id
    assert load_enrollment(state)["device_id"] == second.device_id


def test_refusals_are_clear(server: LiveServer, tmp_path: Path):
    token = server.token()
    enroll(server.url, token, tmp_path / "a")
    with pytest.raises(EnrollmentRefusedError) as used:
        enroll(server.url, token, tmp_path / "b")
    assert used.value.status == 409 and used.value.code == "token_used"
    assert "already used" in str(used.value)
    with pytest.raises(EnrollmentRefusedError) as forged:
        enroll(server.url, "eft_" + "A" * 43, tmp_path / "c")
    assert forged.value.status == 401
    assert not (tmp_path / "b" / ENROLLMENT_FILE).exists()
    assert not (tmp_path / "c" / KEY_FILE).exists()


def test_unreachable_and_bad_urls(tmp_path: Path):
    with pytest.raises(ServerUnreachableError):
        enroll(f"http://127.0.0.1:{free_port()}", "eft_x", tmp_path / "s", timeout_s=5)
    with pytest.raises(EnrollmentError):
        enroll("ftp://example.org", "eft_x", tmp_path / "s")
    with pytest.raises(EnrollmentError):
        enroll("http://127.0.0.1:1", "  ", tmp_path / "s")


def test_cli_agent_enroll(server: LiveServer, tmp_path: Path):
    state = tmp_path / "state"
    token = server.token()
    runner = CliRunner()
    ok = runner.invoke(cli, ["agent", "enroll", "--server", server.url, "--token", token,
                             "--state-dir", str(state)])
    assert ok.exit_code == 0, ok.output
    record = json.loads((state / ENROLLMENT_FILE).read_text())
    assert f"enrolled as device {record['device_id']}" in ok.output
    assert record["broker"]["password"] not in ok.output
    again = runner.invoke(cli, ["agent", "enroll", "--server", server.url, "--token", token,
                                "--state-dir", str(tmp_path / "other")])
    assert again.exit_code == 1
    assert "409" in again.output and "Traceback" not in again.output


class MqttDevice:
    """A paho-mqtt 2.x client that records CONNACKs and disconnects."""

    def __init__(self, url: str, username: str, password: str) -> None:
        host, _, port = url.removeprefix("mqtt://").rpartition(":")
        self.connacks: queue.Queue[bool] = queue.Queue()
        self.disconnected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put(not rc.is_failure)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.client.reconnect_delay_set(60, 120)  # no automatic reconnects during the test
        self.client.connect(host, int(port))
        self.client.loop_start()

    def accepted(self) -> bool:
        return self.connacks.get(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_enrolled_device_uses_embedded_broker_until_decommissioned(tmp_path: Path):
    data_dir = tmp_path / "server"
    init_data_dir(data_dir, all_components())
    config = load_config(data_dir, env={})
    app = create_app(config)
    services: Services = app.extensions["edgefleet"]
    devices = device_service(services)
    broker = EmbeddedBroker("127.0.0.1", 0, ServerBrokerAuth(
        services.store, devices, services.extras["broker_username"]))
    broker.start()
    services.broker = broker
    services.config = dataclasses.replace(config, mqtt_port=broker.port)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    clients: list[MqttDevice] = []
    try:
        live = LiveServer(f"http://127.0.0.1:{httpd.server_port}", services)
        result = enroll(live.url, live.token(), tmp_path / "state")
        creds = load_enrollment(tmp_path / "state")["broker"]
        assert creds["url"] == broker.url
        device = MqttDevice(creds["url"], creds["username"], creds["password"])
        clients.append(device)
        assert device.accepted()
        wrong = MqttDevice(creds["url"], creds["username"], "not-the-password")
        clients.append(wrong)
        assert not wrong.accepted()

        devices.decommission(result.device_id, SYSTEM, reason="test")
        assert device.disconnected.wait(10)  # dropped by the broker hook
        again = MqttDevice(creds["url"], creds["username"], creds["password"])
        clients.append(again)
        assert not again.accepted()
    finally:
        for client in clients:
            client.close()
        httpd.shutdown()
        thread.join()
        broker.stop()
        services.store.close()
