"""The shared harness itself works: the session broker delivers QoS 1 messages."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import BrokerEndpoint


def test_mosquitto_fixture_delivers_qos1(mosquitto: BrokerEndpoint) -> None:
    received: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="harness-sub")
    sub.on_subscribe = lambda *args: subscribed.set()

    def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg.payload)
        if len(received) == 100:
            done.set()

    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("harness/#", qos=1)
    sub.loop_start()
    assert subscribed.wait(5)

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="harness-pub")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    infos = [pub.publish("harness/x", f"{i}".encode(), qos=1) for i in range(100)]
    for info in infos:
        info.wait_for_publish(5)
    assert done.wait(10)
    assert received == [f"{i}".encode() for i in range(100)]
    for client in (pub, sub):
        client.loop_stop()
        client.disconnect()
