"""Who may connect to the embedded broker (real paho-mqtt clients, real amqtt)."""

from __future__ import annotations

import pytest

from edgefleet.fleet_server.broker import EmbeddedBroker
from tests.fleet_server.broker.helpers import (
    PASSWORDS,
    SERVER_USER,
    Client,
    ClientFactory,
    ConnectRefused,
    DictAuth,
    RawClient,
)


def test_device_and_server_with_their_passwords_connect(client: ClientFactory) -> None:
    assert client("dev-a").connect_reason is not None
    assert client(SERVER_USER).paho.is_connected()


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("dev-a", "wrong"),  # bad password
        ("dev-a", "secret-b"),  # another device's password
        ("dev-a", ""),  # empty password
        ("dev-zzz", "secret-a"),  # unknown user
        (None, None),  # anonymous
    ],
)
def test_bad_credentials_get_connack_not_authorised(
    client: ClientFactory, username: str | None, password: str | None
) -> None:
    with pytest.raises(ConnectRefused) as refused:
        client(username, password, connect=False).connect()
    assert refused.value.reason.getName() == "Not authorized"


def test_raw_connack_code_is_5_for_a_bad_password(broker: EmbeddedBroker) -> None:
    raw = RawClient(broker.port)
    try:
        assert raw.connect("raw-1", "dev-a", "nope") == 5
    finally:
        raw.close()


def test_revoked_user_can_no_longer_connect(client: ClientFactory, auth: DictAuth) -> None:
    client("dev-a").close()
    auth.revoke("dev-a")
    with pytest.raises(ConnectRefused):
        client("dev-a", "secret-a", connect=False).connect()


def test_failed_connect_with_a_taken_client_id_leaves_the_owner_alone(
    client: ClientFactory,
) -> None:
    owner = client("dev-b", client_id="dev-b")
    assert owner.subscribe("edgefleet/v1/d/dev-b/cmd")
    # Stock amqtt deletes the session of a client id before checking the password.
    with pytest.raises(ConnectRefused):
        client("dev-a", "bad-password", client_id="dev-b", connect=False).connect()
    # Another user may not take over (or inherit) dev-b's session either.
    with pytest.raises(ConnectRefused) as refused:
        client("dev-a", client_id="dev-b", connect=False).connect()
    assert refused.value.reason.getName() == "Client identifier not valid"

    server = client(SERVER_USER)
    server.publish("edgefleet/v1/d/dev-b/cmd", b"still-here")
    assert owner.next_message().payload == b"still-here"
    assert owner.paho.is_connected()


class _BrokenAuth(DictAuth):
    """A BrokerAuth whose checks blow up for one user (say, the database is gone)."""

    def authenticate(self, username: str, password: str) -> bool:
        if username == "dev-b":
            raise RuntimeError("database is locked")
        return super().authenticate(username, password)

    def may_publish(self, username: str, topic: str) -> bool:
        if topic.endswith("/explode"):
            raise RuntimeError("database is locked")
        return super().may_publish(username, topic)


def test_an_exception_in_broker_auth_means_no() -> None:
    broker = EmbeddedBroker("127.0.0.1", 0, _BrokenAuth(PASSWORDS))
    with broker:
        with pytest.raises(ConnectRefused):
            Client(broker.port, "dev-b", PASSWORDS["dev-b"]).connect()
        device = Client(broker.port, "dev-a", PASSWORDS["dev-a"]).connect()
        try:
            assert device.subscribe("edgefleet/v1/d/dev-a/#")
            device.publish("edgefleet/v1/d/dev-a/explode", b"refused")
            device.publish("edgefleet/v1/d/dev-a/marker", b"barrier")
            assert [m.payload for m in device.until("edgefleet/v1/d/dev-a/marker")] == [b"barrier"]
        finally:
            device.close()
