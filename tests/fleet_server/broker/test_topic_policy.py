"""The embedded broker enforces the acl policy on publish, subscribe, delivery,
retained messages and last wills (real paho-mqtt / raw clients, real amqtt)."""

from __future__ import annotations

import pytest

from edgefleet.fleet_server.broker import EmbeddedBroker
from tests.fleet_server.broker.helpers import (
    PASSWORDS,
    SERVER_USER,
    ClientFactory,
    ConnectRefused,
    RawClient,
)

A = "edgefleet/v1/d/dev-a"
B = "edgefleet/v1/d/dev-b"


def test_device_publishes_and_subscribes_in_its_own_subtree(client: ClientFactory) -> None:
    device = client("dev-a")
    assert device.subscribe(f"{A}/#")
    assert device.subscribe(f"{A}/+")
    assert device.subscribe(f"{A}/cmd")
    device.publish(f"{A}/heartbeat", b"hb")
    received = device.until(f"{A}/heartbeat")
    assert {m.payload for m in received} == {b"hb"}


@pytest.mark.parametrize(
    "topic_filter",
    [
        f"{B}/#",
        f"{B}/cmd",
        "edgefleet/v1/d/+/cmd",
        "edgefleet/v1/d/+/#",
        "edgefleet/v1/d/#",
        "edgefleet/v1/#",
        "edgefleet/#",
        "#",
        "+/v1/d/dev-a/cmd",
        "$SYS/#",
    ],
)
def test_device_may_not_subscribe_outside_its_subtree(
    client: ClientFactory, topic_filter: str
) -> None:
    assert not client("dev-a").subscribe(topic_filter)


@pytest.mark.parametrize(
    "topic_filter", [f"{A}+/#", f"{A}/#/x", f"{A}/c#", f"{A}/+x", "edgefleet/v1/d/dev-a\x00/#"]
)
def test_malformed_filters_are_refused(broker: EmbeddedBroker, topic_filter: str) -> None:
    raw = RawClient(broker.port)  # paho refuses to send these at all
    try:
        assert raw.connect("raw-a", "dev-a", PASSWORDS["dev-a"]) == 0
        assert raw.subscribe(topic_filter) == 0x80
    finally:
        raw.close()


def test_device_a_cannot_publish_as_device_b(client: ClientFactory) -> None:
    server = client(SERVER_USER)
    assert server.subscribe("edgefleet/v1/#")
    device_b = client("dev-b")
    assert device_b.subscribe(f"{B}/#")
    device_a = client("dev-a")

    device_a.publish(f"{B}/status", b"forged-offline", retain=True)
    device_a.publish(f"{B}/heartbeat", b"forged-hb", qos=0)
    device_a.publish("edgefleet/v1/fleet/announce", b"forged-fleet")
    device_a.publish(f"{A}/marker", b"barrier")

    seen = server.until(f"{A}/marker", b"barrier")
    assert [m.topic for m in seen] == [f"{A}/marker"]
    # The server's own message to B is the barrier for B: nothing forged arrived first.
    server.publish(f"{B}/cmd", b"barrier")
    assert [m.payload for m in device_b.until(f"{B}/cmd")] == [b"barrier"]

    # The forged retained message was not stored either.
    late = client(SERVER_USER)
    assert late.subscribe(f"{B}/status")
    late.publish(f"{B}/marker", b"barrier")
    assert late.subscribe(f"{B}/marker")
    late.publish(f"{B}/marker", b"barrier-2")
    assert [m.payload for m in late.until(f"{B}/marker", b"barrier-2")] == [b"barrier-2"]


def test_device_a_never_receives_device_b_traffic(client: ClientFactory) -> None:
    device_a = client("dev-a")
    for topic_filter in (f"{B}/#", "edgefleet/v1/d/+/cmd", "#"):
        assert not device_a.subscribe(topic_filter)
    assert device_a.subscribe(f"{A}/#")
    device_b = client("dev-b")
    server = client(SERVER_USER)

    device_b.publish(f"{B}/heartbeat", b"b-private")
    server.publish(f"{B}/cmd", b"for-b-only")
    server.publish(f"{A}/cmd", b"barrier")

    assert [m.payload for m in device_a.until(f"{A}/cmd")] == [b"barrier"]


def test_server_user_reaches_every_device_but_not_outside_the_root(
    client: ClientFactory,
) -> None:
    server = client(SERVER_USER)
    assert server.subscribe("edgefleet/v1/#")
    assert server.subscribe("edgefleet/v1/d/+/status")
    assert not server.subscribe("#")
    assert not server.subscribe("other/#")
    device = client("dev-a")
    device.publish(f"{A}/status", b"online")
    assert server.until(f"{A}/status")[-1].payload == b"online"


def test_retained_messages_reach_only_their_own_device(client: ClientFactory) -> None:
    server = client(SERVER_USER)
    server.publish(f"{A}/desired", b"config-a", retain=True)
    server.publish(f"{B}/desired", b"config-b", retain=True)
    # B holds a subscription to its own subtree: stock amqtt would replay B's retained
    # messages to every new client through that filter.
    device_b = client("dev-b")
    assert device_b.subscribe(f"{B}/#")
    assert device_b.next_message().payload == b"config-b"

    device_a = client("dev-a")
    assert not device_a.subscribe(f"{B}/desired")
    assert device_a.subscribe(f"{A}/#")
    first = device_a.next_message()
    assert (first.topic, first.payload, first.retain) == (f"{A}/desired", b"config-a", True)
    server.publish(f"{A}/cmd", b"barrier")
    assert [m.payload for m in device_a.until(f"{A}/cmd")] == [b"barrier"]


def test_device_retains_its_own_status(client: ClientFactory) -> None:
    client("dev-a").publish(f"{A}/status", b"online", retain=True)
    server = client(SERVER_USER)
    assert server.subscribe("edgefleet/v1/d/+/status")
    message = server.next_message()
    assert (message.topic, message.payload, message.retain) == (f"{A}/status", b"online", True)


def test_last_will_is_published_and_retained_when_a_device_vanishes(
    broker: EmbeddedBroker, client: ClientFactory
) -> None:
    server = client(SERVER_USER)
    assert server.subscribe(f"{A}/status")
    raw = RawClient(broker.port)
    will = (f"{A}/status", b"offline", 1, True)
    assert raw.connect("dev-a", "dev-a", PASSWORDS["dev-a"], will=will) == 0
    raw.vanish()

    message = server.next_message()
    assert (message.topic, message.payload) == (f"{A}/status", b"offline")
    later = client(SERVER_USER)
    assert later.subscribe(f"{A}/status")
    retained = later.next_message()
    assert (retained.payload, retained.retain) == (b"offline", True)


def test_last_will_on_another_devices_topic_is_refused(client: ClientFactory) -> None:
    with pytest.raises(ConnectRefused) as refused:
        client("dev-a", will=(f"{B}/status", b"offline", 1, True), connect=False).connect()
    assert refused.value.reason.getName() == "Not authorized"
