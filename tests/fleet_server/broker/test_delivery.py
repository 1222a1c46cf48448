"""QoS 1 delivery through the embedded broker: nothing lost, devices kept apart."""

from __future__ import annotations

from collections import defaultdict

from tests.fleet_server.broker.helpers import SERVER_USER, Client, ClientFactory

COUNT = 200


def _collect(subscriber: Client, expected: int) -> list[tuple[str, bytes]]:
    return [
        (message.topic, message.payload)
        for message in (subscriber.next_message() for _ in range(expected))
    ]


def test_qos1_roundtrip_of_200_messages_without_loss(client: ClientFactory) -> None:
    server = client(SERVER_USER)
    assert server.subscribe("edgefleet/v1/d/+/heartbeat", qos=1)
    device = client("dev-a")
    for seq in range(COUNT):
        device.publish("edgefleet/v1/d/dev-a/heartbeat", str(seq).encode(), qos=1)

    received = _collect(server, COUNT)

    assert sorted(int(payload) for _, payload in received) == list(range(COUNT))
    assert all(message.qos == 1 for message in list(server.messages.queue))


def test_two_devices_side_by_side_each_get_only_their_own(client: ClientFactory) -> None:
    server = client(SERVER_USER)
    assert server.subscribe("edgefleet/v1/d/+/heartbeat", qos=1)
    devices = {name: client(name) for name in ("dev-a", "dev-b")}
    for name, device in devices.items():
        assert device.subscribe(f"edgefleet/v1/d/{name}/cmd", qos=1)

    for name, device in devices.items():
        payloads = [f"{name}:{seq}".encode() for seq in range(COUNT)]
        device.publish_all((f"edgefleet/v1/d/{name}/heartbeat", p) for p in payloads)
        server.publish_all((f"edgefleet/v1/d/{name}/cmd", p) for p in payloads)

    by_device: dict[str, list[int]] = defaultdict(list)
    for topic, payload in _collect(server, 2 * COUNT):
        owner, seq = payload.decode().split(":")
        assert topic == f"edgefleet/v1/d/{owner}/heartbeat"
        by_device[owner].append(int(seq))
    assert {name: sorted(seqs) for name, seqs in by_device.items()} == {
        name: list(range(COUNT)) for name in devices
    }
    for name, device in devices.items():
        commands = _collect(device, COUNT)
        assert {topic for topic, _ in commands} == {f"edgefleet/v1/d/{name}/cmd"}
        assert sorted(int(p.decode().split(":")[1]) for _, p in commands) == list(range(COUNT))
        assert all(p.decode().startswith(f"{name}:") for _, p in commands)
        assert device.messages.empty()
