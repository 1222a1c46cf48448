"""Start, stop, port conflicts and credential revocation of the embedded broker."""

from __future__ import annotations

import socket
import threading
from typing import cast

import pytest

from edgefleet.fleet_server.broker import BrokerAuth, BrokerPortInUse, EmbeddedBroker
from edgefleet.fleet_server.services import BrokerControl
from tests.fleet_server.broker.helpers import (
    PASSWORDS,
    SERVER_USER,
    Client,
    ClientFactory,
    ConnectRefused,
    DictAuth,
    RawClient,
)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _broker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mqtt-broker-")]


def test_port_zero_gives_a_real_port_and_url(auth: DictAuth) -> None:
    broker = EmbeddedBroker("127.0.0.1", 0, auth)
    with broker:
        assert broker.running
        assert broker.port > 0
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        Client(broker.port, "dev-a", PASSWORDS["dev-a"]).connect().close()
    assert not broker.running


def test_stop_is_idempotent_and_frees_the_port(auth: DictAuth) -> None:
    before = set(_broker_threads())
    broker = EmbeddedBroker("127.0.0.1", 0, auth)
    broker.stop()  # never started: nothing to do
    broker.start()
    broker.start()  # already running: nothing to do
    port = broker.port
    device = Client(port, "dev-a", PASSWORDS["dev-a"]).connect()
    broker.stop()
    broker.stop()
    assert device.wait_disconnected()
    device.close()
    assert set(_broker_threads()) == before
    assert _port_is_free(port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_restart_listens_on_the_same_port(auth: DictAuth) -> None:
    broker = EmbeddedBroker("127.0.0.1", 0, auth)
    broker.start()
    port = broker.port
    broker.stop()
    broker.start()
    try:
        assert broker.port == port
        Client(port, "dev-a", PASSWORDS["dev-a"]).connect().close()
    finally:
        broker.stop()


def test_port_taken_by_another_process_is_a_clear_error(auth: DictAuth) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        broker = EmbeddedBroker("127.0.0.1", port, auth)
        with pytest.raises(BrokerPortInUse) as error:
            broker.start()
    assert f"127.0.0.1:{port} is already in use" in str(error.value)
    assert error.value.port == port
    assert not broker.running


def test_second_broker_on_the_same_port_is_refused(broker: EmbeddedBroker, auth: DictAuth) -> None:
    with pytest.raises(BrokerPortInUse):
        EmbeddedBroker("127.0.0.1", broker.port, auth).start()
    Client(broker.port, "dev-a", PASSWORDS["dev-a"]).connect().close()  # first one unharmed


def test_stop_is_bounded_with_a_client_that_stopped_reading(auth: DictAuth) -> None:
    """amqtt's own shutdown drains every socket: a stalled client used to hang it."""
    before = set(_broker_threads())
    broker = EmbeddedBroker("127.0.0.1", 0, auth, stop_grace_s=0.5)
    broker.start()
    port = broker.port
    stalled = RawClient(port, receive_buffer=4096)
    assert stalled.connect("stalled", SERVER_USER, PASSWORDS[SERVER_USER]) == 0
    assert stalled.subscribe("edgefleet/v1/#", qos=0) == 0
    publisher = Client(port, "dev-a", PASSWORDS["dev-a"]).connect()
    for _ in range(64):  # ~4 MB towards a reader that never reads
        publisher.publish("edgefleet/v1/d/dev-a/predictions", b"x" * 65536, qos=1)

    broker.stop()

    assert set(_broker_threads()) == before
    assert _port_is_free(port)
    publisher.close()
    stalled.close()


def test_embedded_broker_is_the_services_broker_control(broker: EmbeddedBroker) -> None:
    control: BrokerControl = broker
    control.disconnect("nobody-connected")  # unknown user: nothing to do


def test_disconnect_drops_a_revoked_device_and_nobody_else(
    broker: EmbeddedBroker, auth: DictAuth, client: ClientFactory
) -> None:
    revoked = client("dev-a", clean_session=False, client_id="dev-a")
    assert revoked.subscribe("edgefleet/v1/d/dev-a/#")
    second = client("dev-a", client_id="dev-a-2")  # every connection of the user goes
    other = client("dev-b")
    assert other.subscribe("edgefleet/v1/d/dev-b/#")

    auth.revoke("dev-a")
    broker.disconnect("dev-a")

    assert revoked.wait_disconnected()
    assert second.wait_disconnected()
    assert not revoked.paho.is_connected()
    with pytest.raises(ConnectRefused):
        Client(broker.port, "dev-a", PASSWORDS["dev-a"], client_id="dev-a").connect()
    other.publish("edgefleet/v1/d/dev-b/heartbeat", b"still-connected")
    assert other.next_message().payload == b"still-connected"
    assert other.paho.is_connected()

    # The stored (persistent) session went too: nothing queued for revoked credentials.
    auth.grant("dev-a", "new-password")
    back = client("dev-a", "new-password", clean_session=False, client_id="dev-a")
    assert back.session_present is False


def test_disconnect_on_a_stopped_broker_does_nothing(auth: DictAuth) -> None:
    broker = EmbeddedBroker("127.0.0.1", 0, auth)
    broker.disconnect("dev-a")
    broker.start()
    broker.stop()
    broker.disconnect("dev-a")


def test_constructor_requires_a_broker_auth() -> None:
    with pytest.raises(TypeError):
        EmbeddedBroker("127.0.0.1", 0, cast(BrokerAuth, object()))
