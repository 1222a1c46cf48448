"""Generated Mosquitto config (password file + pattern ACL) on a real Mosquitto 2.x.

Each broker here is a real ``mosquitto`` started on a free loopback port with the files
:func:`write_mosquitto_config` produced. Negative checks ("B never receives X") use the
marker barrier of ``helpers``: a permitted message sent after X, once the earlier
publish was acknowledged; Mosquitto routes a message before it sends the PUBACK, so X
would have been queued ahead of the marker.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.fleet_server.app import all_components
from edgefleet.fleet_server.broker.mosquitto import (
    MosquittoConfigError,
    MosquittoFiles,
    hash_password_entries,
    is_mosquitto_hash,
    mosquitto_hash,
    mosquitto_hash_matches,
    render_acl,
    render_password_file,
    write_mosquitto_config,
)
from edgefleet.fleet_server.datadir import init_data_dir, load_secrets
from edgefleet.tools.cli import cli
from tests.conftest import find_mosquitto, free_port, wait_for_port
from tests.fleet_server.broker.helpers import Client, ConnectRefused, RawClient

SERVICE = "edgefleet-server"
PASSWORDS = {SERVICE: "svc-secret", "dev-a": "secret-a", "dev-b": "secret-b"}
A = "edgefleet/v1/d/dev-a"
B = "edgefleet/v1/d/dev-b"
Connect = Callable[..., Client]


@dataclass
class Mosquitto:
    proc: subprocess.Popen[bytes]
    port: int
    files: MosquittoFiles
    log: Path

    def client(self, username: str | None, password: str | None = None, **kw: object) -> Client:
        if password is None and username is not None:
            password = PASSWORDS[username]
        return Client(self.port, username, password, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_mosquitto(files: MosquittoFiles, port: int, log: Path) -> Mosquitto:
    proc = subprocess.Popen([find_mosquitto(), "-c", str(files.conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
        logged = log.read_text() if log.exists() else ""
        raise RuntimeError(f"mosquitto did not start: {output} {logged}") from None
    return Mosquitto(proc, port, files, log)


def write_config(directory: Path, port: int, entries: list[tuple[str, str]]) -> MosquittoFiles:
    # run_as_user = us: started as root, Mosquitto would otherwise switch to the
    # `mosquitto` user and fail to read our 0600 files (ignored when not root).
    return write_mosquitto_config(directory, port, SERVICE, entries, bind_address="127.0.0.1",
                                  log_file=directory / "mosquitto.log",
                                  run_as_user=getpass.getuser())


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    directory = tmp_path_factory.mktemp("mosquitto-acl")
    port = free_port()
    entries = [(user, mosquitto_hash(password)) for user, password in PASSWORDS.items()]
    running = start_mosquitto(write_config(directory, port, entries), port,
                              directory / "mosquitto.log")
    yield running
    running.stop()


@pytest.fixture
def connect(broker: Mosquitto) -> Iterator[Connect]:
    made: list[Client] = []

    def factory(username: str | None, password: str | None = None, **kw: object) -> Client:
        made.append(broker.client(username, password, **kw))
        return made[-1].connect()

    yield factory
    for each in made:
        each.close()


# -- the hash format ---------------------------------------------------------------------


def test_hash_is_byte_identical_to_mosquitto_passwd(tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-H", "sha512-pbkdf2", "-c", "-b", str(pwfile),
                    "dev-a", "pässword"], check=True)
    user, stored = pwfile.read_text().strip().split(":", 1)
    _, ident, iterations, salt, _ = stored.split("$")
    assert (user, ident, iterations) == ("dev-a", "7", "101")
    assert mosquitto_hash("pässword", salt=base64.b64decode(salt)) == stored
    assert mosquitto_hash_matches("pässword", stored)
    assert not mosquitto_hash_matches("password", stored)


def test_hash_salts_and_iterations() -> None:
    first, second = mosquitto_hash("x"), mosquitto_hash("x")
    assert first != second and is_mosquitto_hash(first) and is_mosquitto_hash(second)
    slow = mosquitto_hash("x", iterations=1000)
    assert slow.startswith("$7$1000$") and mosquitto_hash_matches("x", slow)
    assert not is_mosquitto_hash("sha256:" + "0" * 64)
    assert not mosquitto_hash_matches("x", "$7$101$bad$bad")
    for bad in ({"iterations": 0}, {"salt": b""}):
        with pytest.raises(MosquittoConfigError):
            mosquitto_hash("x", **bad)
    with pytest.raises(MosquittoConfigError):
        mosquitto_hash("")


# -- rendering ------------------------------------------------------------------------------


def test_acl_gives_devices_their_subtree_and_the_service_user_the_tree() -> None:
    rules = [line for line in render_acl(SERVICE).splitlines()
             if line and not line.startswith("#")]
    assert rules == ["pattern readwrite edgefleet/v1/d/%u/#", f"user {SERVICE}",
                     "topic readwrite edgefleet/v1/#"]


@pytest.mark.parametrize("username", ["", "a/b", "a:b", "a+b", "a#", "a b", "a\nb", "$SYS",
                                      "-x", "é"])
def test_unsafe_usernames_never_reach_the_files(username: str) -> None:
    with pytest.raises(MosquittoConfigError):
        render_password_file([(username, mosquitto_hash("x"))])
    with pytest.raises(MosquittoConfigError):
        render_acl(username)


def test_password_file_refuses_non_mosquitto_hashes_and_duplicates() -> None:
    good = mosquitto_hash("x")
    assert render_password_file([("dev-a", good)]) == f"dev-a:{good}\n"
    for stored in ("x", "sha256:" + "0" * 64, "$6$abc$def", good + "\nevil:x"):
        with pytest.raises(MosquittoConfigError):
            render_password_file([("dev-a", stored)])
    with pytest.raises(MosquittoConfigError):
        render_password_file([("dev-a", good), ("dev-a", good)])


def test_plaintext_entries_validate_device_ids() -> None:
    entries = hash_password_entries(SERVICE, "s", [("dev-a", "pa")])
    assert [user for user, _ in entries] == [SERVICE, "dev-a"]
    assert mosquitto_hash_matches("pa", entries[1][1])
    for devices in ([("dev/a", "p")], [("dev+a", "p")], [(SERVICE, "p")],
                    [("dev-a", "p"), ("dev-a", "q")], [("dev-a", "")]):
        with pytest.raises(MosquittoConfigError):
            hash_password_entries(SERVICE, "s", devices)


def test_written_files_are_private_and_a_bad_entry_changes_nothing(tmp_path: Path) -> None:
    entries = [(SERVICE, mosquitto_hash("s"))]
    files = write_mosquitto_config(tmp_path / "conf", 18830, SERVICE, entries)
    for path in (files.conf, files.password_file, files.acl_file):
        assert os.stat(path).st_mode & 0o777 == 0o600
    conf = files.conf.read_text().splitlines()
    for line in ("allow_anonymous false", "per_listener_settings false", "listener 18830",
                 "max_queued_messages 0", f"password_file {files.password_file}",
                 f"acl_file {files.acl_file}"):
        assert line in conf
    before = files.password_file.read_text()
    with pytest.raises(MosquittoConfigError):
        write_mosquitto_config(tmp_path / "conf", 18830, SERVICE,
                               [*entries, ("dev-a", "plaintext")])
    with pytest.raises(MosquittoConfigError, match="service user"):
        write_mosquitto_config(tmp_path / "conf", 18830, SERVICE, [])
    assert files.password_file.read_text() == before
    assert sorted(p.name for p in (tmp_path / "conf").iterdir()) == [
        "edgefleet.acl", "edgefleet.passwd", "mosquitto.conf"]


# -- a real Mosquitto with the generated files ---------------------------------------------


def test_refuses_anonymous_unknown_users_and_wrong_passwords(broker: Mosquitto) -> None:
    for username, password in ((None, None), ("dev-a", "wrong"), ("dev-c", "secret-a"),
                               (SERVICE, "secret-a")):
        client = broker.client(username, password)
        with pytest.raises(ConnectRefused) as refused:
            client.connect()
        client.close()
        assert refused.value.reason.getName() == "Not authorized"  # CONNACK 5


def test_service_user_may_use_the_whole_tree(connect: Connect) -> None:
    server = connect(SERVICE)
    assert server.subscribe("edgefleet/v1/#")
    topics = [f"{A}/desired", f"{B}/status", "edgefleet/v1/broadcast/x"]
    server.publish_all((topic, b"s") for topic in topics)
    assert sorted(m.topic for m in (server.next_message() for _ in topics)) == sorted(topics)


def test_device_uses_its_own_subtree(connect: Connect) -> None:
    device, server = connect("dev-a"), connect(SERVICE)
    assert device.subscribe(f"{A}/#") and server.subscribe("edgefleet/v1/d/+/telemetry")
    device.publish(f"{A}/telemetry", b"t1")
    assert server.next_message().payload == b"t1"
    assert device.next_message().topic == f"{A}/telemetry"
    server.publish(f"{A}/desired", b"cfg")
    assert device.next_message().payload == b"cfg"


def test_device_publishing_as_another_is_cut_off_and_not_delivered(
        connect: Connect) -> None:
    server, victim = connect(SERVICE), connect("dev-b")
    assert server.subscribe("edgefleet/v1/d/#") and victim.subscribe(f"{B}/#")
    for topic, retain in ((f"{B}/status", True), (f"{B}/telemetry", False)):
        forger = connect("dev-a")
        forger.paho.publish(topic, b"forged", qos=1, retain=retain)
        # Mosquitto 2.0 closes an MQTT 3.1.1 connection on a denied PUBLISH (which the
        # spec allows, MQTT-3.3.5-2) instead of acknowledging it as the embedded broker
        # does; it denied and dropped the message before closing.
        assert forger.wait_disconnected()
    server.publish(f"{B}/marker", b"barrier")
    assert [m.payload for m in server.until(f"{B}/marker")] == [b"barrier"]
    assert [m.payload for m in victim.until(f"{B}/marker")] == [b"barrier"]
    # Nor was the forged status retained: a new subscriber of B gets only B's own marker.
    late = connect(SERVICE)
    assert late.subscribe(f"{B}/#")
    victim.publish(f"{B}/marker", b"own")
    assert [m.payload for m in late.until(f"{B}/marker")] == [b"own"]


def test_forged_last_will_is_not_published(broker: Mosquitto, connect: Connect) -> None:
    victim = connect("dev-b")
    assert victim.subscribe(f"{B}/#")
    forger = RawClient(broker.port)
    # Mosquitto accepts the CONNECT (the embedded broker refuses it) but checks the will
    # topic against the ACL when it would publish the will.
    assert forger.connect("forged-will", "dev-a", "secret-a",
                          will=(f"{B}/status", b"offline", 1, True)) == 0
    forger.vanish()
    assert _eventually(lambda: "Client forged-will closed its connection" in
                       broker.log.read_text(), True), "mosquitto never saw the drop"
    connect(SERVICE).publish(f"{B}/marker", b"barrier")
    assert [m.payload for m in victim.until(f"{B}/marker")] == [b"barrier"]


def test_device_cannot_read_another_devices_topics(connect: Connect) -> None:
    owner, server = connect("dev-b"), connect(SERVICE)
    owner.publish(f"{B}/status", b"retained-b", retain=True)
    try:
        spy = connect("dev-a")
        # Mosquitto 2.0 grants every SUBSCRIBE and checks read access per message, so
        # the SUBACKs say nothing; what matters is that nothing of B's arrives.
        for topic_filter in (f"{B}/#", f"{B}/status", "edgefleet/v1/d/+/status", "#",
                             f"{A}/#"):
            spy.subscribe(topic_filter)
        owner.publish(f"{B}/telemetry", b"from-b")
        server.publish(f"{B}/desired", b"to-b")
        server.publish(f"{A}/marker", b"barrier")
        seen = spy.until(f"{A}/marker")
        assert all(m.topic.startswith(f"{A}/") for m in seen), seen
    finally:
        owner.publish(f"{B}/status", b"", retain=True)  # clear it for the other tests


def test_wildcard_client_id_gets_no_pattern_rights(connect: Connect) -> None:
    # Mosquitto's own guard: pattern ACLs are refused to client ids containing + or #,
    # so even the device's own subtree is closed to such a connection.
    server = connect(SERVICE)
    assert server.subscribe(f"{A}/#")
    sneaky = connect("dev-a", client_id="dev-a+#")
    sneaky.paho.publish(f"{A}/telemetry", b"sneaky", qos=1)
    assert sneaky.wait_disconnected()
    server.publish(f"{A}/marker", b"barrier")
    assert [m.payload for m in server.until(f"{A}/marker")] == [b"barrier"]


# -- the CLI: regenerate from the data dir + devices.json, reload with SIGHUP ---------------


def _connects(port: int, username: str, password: str) -> bool:
    client = Client(port, username, password)
    try:
        client.connect()
    except ConnectRefused:
        return False
    finally:
        client.close()
    return True


def _eventually(check: Callable[[], bool], want: bool, timeout_s: float = 10.0) -> bool:
    """Poll ``check()`` until it returns ``want`` (SIGHUP is handled asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check() == want:
            return True
        time.sleep(0.05)
    return False


def test_cli_writes_config_and_reloads_mosquitto(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "mosquitto"
    init_data_dir(data_dir, all_components())
    secrets = load_secrets(data_dir)
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps({"dev-a": "secret-a"}))
    port = free_port()
    args = ["server", "mosquitto-config", "--data-dir", str(data_dir), "--out", str(out),
            "--devices", str(devices), "--port", str(port), "--bind", "127.0.0.1",
            "--run-as", getpass.getuser(), "--pid-file", str(tmp_path / "mosquitto.pid")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    passwd = (out / "edgefleet.passwd").read_text()
    assert secrets.broker_password not in passwd and "secret-a" not in passwd
    files = MosquittoFiles(out / "mosquitto.conf", out / "edgefleet.passwd", out / "edgefleet.acl")
    running = start_mosquitto(files, port, tmp_path / "none.log")
    try:
        assert _connects(port, SERVICE, secrets.broker_password)
        assert _connects(port, "dev-a", "secret-a")
        assert not _connects(port, "dev-c", "secret-c")
        online = Client(port, "dev-a", "secret-a").connect()
        # dev-c enrolled, dev-a decommissioned: regenerate and SIGHUP.
        devices.write_text(json.dumps({"dev-c": "secret-c"}))
        result = CliRunner().invoke(cli, [*args, "--reload"])
        assert result.exit_code == 0, result.output
        assert "SIGHUP" in result.output
        assert _eventually(lambda: _connects(port, "dev-c", "secret-c"), True)
        # The reload re-checks live connections: the decommissioned device is dropped.
        assert online.wait_disconnected()
        online.close()
        assert not _connects(port, "dev-a", "secret-a")
        assert _connects(port, SERVICE, secrets.broker_password)
    finally:
        running.stop()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    missing = CliRunner().invoke(cli, ["server", "mosquitto-config", "--data-dir",
                                       str(data_dir), "--out", str(tmp_path / "o")])
    assert missing.exit_code != 0 and "not initialised" in missing.output
    init_data_dir(data_dir, all_components())
    bad = tmp_path / "devices.json"
    for content in ("[1, 2]", "{not json", json.dumps({"dev/x": "p"})):
        bad.write_text(content)
        result = CliRunner().invoke(cli, ["server", "mosquitto-config", "--data-dir",
                                          str(data_dir), "--out", str(tmp_path / "o"),
                                          "--devices", str(bad)])
        assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
        assert "Traceback" not in result.output
    no_pid = CliRunner().invoke(cli, ["server", "mosquitto-config", "--data-dir",
                                      str(data_dir), "--out", str(tmp_path / "o"), "--reload"])
    assert no_pid.exit_code != 0 and "--pid-file" in no_pid.output


def test_cli_takes_enrolled_devices_from_the_database(tmp_path: Path) -> None:
    """Devices enrolled with the server reach Mosquitto without any plaintext file, and
    a decommissioned one is refused after the next regeneration."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.fleet_server.audit import Actor, ActorKind, AuditLog
    from edgefleet.fleet_server.devices.enrollment import EnrollmentService
    from edgefleet.fleet_server.devices.service import DeviceService
    from edgefleet.fleet_server.storage import Store

    data_dir, out = tmp_path / "data", tmp_path / "mosquitto"
    init_data_dir(data_dir, all_components())
    store = Store.open(data_dir / "edgefleet.db")
    store.migrate(all_components())
    audit = AuditLog(store)
    operator = Actor(ActorKind.SYSTEM, "test", "test", "admin")
    enrollment = EnrollmentService(store, audit)
    _, secret = enrollment.create_token(operator, ttl_s=600)
    public_pem = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    device = enrollment.enroll(secret, public_pem)
    port = free_port()
    args = ["server", "mosquitto-config", "--data-dir", str(data_dir), "--out", str(out),
            "--port", str(port), "--bind", "127.0.0.1", "--run-as", getpass.getuser()]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert device.broker_password not in (out / "edgefleet.passwd").read_text()
    files = MosquittoFiles(out / "mosquitto.conf", out / "edgefleet.passwd", out / "edgefleet.acl")
    running = start_mosquitto(files, port, tmp_path / "none.log")
    try:
        assert _connects(port, device.device_id, device.broker_password)
        assert not _connects(port, device.device_id, "not-the-password")
    finally:
        running.stop()
    DeviceService(store, audit).decommission(device.device_id, operator, "test")
    store.close()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert device.device_id not in (out / "edgefleet.passwd").read_text()
