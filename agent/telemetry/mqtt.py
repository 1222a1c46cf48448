"""The one thin adapter over paho-mqtt 2.x: one :class:`MqttConnection` per connect.

Rules:

* VERSION2 callbacks only, and they never raise: each one is wrapped in try/except,
  logs, and only hands data on (an ack list, a queue, an event). All decisions happen
  in the caller's thread (see :mod:`edgefleet.agent.telemetry.client`).
* MQTT 3.1.1 and 5 alike: clean session / clean start, no v5 properties anywhere (the
  embedded amqtt broker speaks 3.1.1 only); metadata travels in the envelope.
* A fresh paho client per connection attempt with ``reconnect_on_failure=False``: paho
  never reconnects or re-sends on its own, so the outbox is the only source of resends
  and each connection carries its own last will (which names its own ``bd``).
* The client is :class:`~edgefleet.agent.telemetry.transport.FastClient` (buffered reads:
  a PUBACK costs no system call of its own) with paho's in-flight limit off: the caller
  bounds what is in flight (the client's window), and paho's limit rescans every
  unacknowledged message on each PUBACK.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgefleet.agent.telemetry.errors import BrokerConfigError, TelemetryError
from edgefleet.agent.telemetry.transport import FastClient

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


class Protocol(Enum):
    """MQTT protocol level spoken to the broker."""

    V311 = "3.1.1"
    V5 = "5"


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect (``password`` is kept out of ``repr``)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None  # None: the system trust store (with tls)
    protocol: Protocol = Protocol.V311
    keepalive_s: int = 30

    @classmethod
    def from_url(
        cls,
        url: str,
        username: str | None = None,
        password: str | None = None,
        protocol: Protocol = Protocol.V311,
        keepalive_s: int = 30,
    ) -> BrokerConfig:
        """Parse ``mqtt://host:port`` or ``mqtts://host:port`` (TLS).

        Raises:
            BrokerConfigError: unknown scheme, no host, bad port.
        """
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in _DEFAULT_PORTS or not parsed.hostname:
            raise BrokerConfigError(f"unsupported broker URL {url!r} (use mqtt:// or mqtts://)")
        try:
            port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        except ValueError as e:
            raise BrokerConfigError(f"bad port in broker URL {url!r}") from e
        return cls(host=parsed.hostname, port=port, username=username, password=password,
                   tls=parsed.scheme in ("mqtts", "ssl"), protocol=protocol,
                   keepalive_s=keepalive_s)


def broker_from_enrollment(state_dir: Path) -> tuple[str, BrokerConfig]:
    """``(device_id, BrokerConfig)`` from the enrollment stored in ``state_dir``.

    Raises:
        BrokerConfigError: not enrolled, or the record lacks broker credentials.
    """
    from edgefleet.agent.enroll import EnrollmentError, load_enrollment

    try:
        record = load_enrollment(Path(state_dir))
    except EnrollmentError as e:
        raise BrokerConfigError(str(e)) from e
    broker = record.get("broker")
    if not isinstance(broker, dict) or not isinstance(broker.get("url"), str):
        raise BrokerConfigError("enrollment record has no broker URL")
    config = BrokerConfig.from_url(broker["url"], broker.get("username"), broker.get("password"))
    return str(record["device_id"]), config


class NotConnectedError(TelemetryError):
    """The connection is gone; the caller starts a new one (internal to the client)."""


@dataclass(frozen=True)
class Will:
    """The last will: published by the broker if the connection dies uncleanly."""

    topic: str
    payload: bytes
    retain: bool = True


class MqttConnection:
    """One connection to the broker; create a new one for every attempt.

    ``on_ack(mid)`` runs on PUBACK of a QoS 1 publish, ``on_message(topic, payload)``
    for inbound messages, ``on_down()`` once when the connection ends. They run on
    paho's network thread and must only hand data on. The caller keeps the number of
    unacknowledged publishes bounded (``max_inflight`` is accepted for compatibility and
    not enforced here; see the module docstring).
    """

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str,
        will: Will | None,
        *,
        on_ack: Callable[[int], None],
        on_message: Callable[[str, bytes], None],
        on_down: Callable[[], None],
        max_inflight: int = 256,
    ) -> None:
        self._broker = broker
        self._on_ack = on_ack
        self._on_message = on_message
        self._on_down = on_down
        self._settled = threading.Event()  # CONNACK arrived or the connection ended
        self._down = threading.Event()
        self._refusal: str | None = None
        v5 = broker.protocol is Protocol.V5
        self._client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else True,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            reconnect_on_failure=False,
        )
        if broker.username is not None:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self._client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        self._client.max_inflight_messages_set(0)  # bounded by the caller
        self._client.on_connect = self._cb_connect
        self._client.on_disconnect = self._cb_disconnect
        self._client.on_connect_fail = self._cb_connect_fail
        self._client.on_publish = self._cb_publish
        self._client.on_message = self._cb_message

    # -- caller side -----------------------------------------------------------------

    def open(self, timeout_s: float) -> bool:
        """Connect and wait for a successful CONNACK; False (logged) on any failure."""
        b = self._broker
        self._client.connect_timeout = timeout_s
        try:
            self._client.connect(b.host, b.port, keepalive=b.keepalive_s)
        except (OSError, ValueError, ssl.SSLError) as e:
            log.info("cannot connect to %s:%s: %s", b.host, b.port, e)
            return False
        self._client.loop_start()
        if not self._settled.wait(timeout_s):
            log.info("no CONNACK from %s:%s within %.1fs", b.host, b.port, timeout_s)
            self.close()
            return False
        if self._refusal is not None or self._down.is_set():
            log.warning("broker %s:%s refused the connection: %s", b.host, b.port,
                        self._refusal or "connection closed")
            self.close()
            return False
        return True

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the end of the connection."""
        return self._settled.is_set() and not self._down.is_set() and self._refusal is None

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Queue a QoS 1 publish; return its message id (for ``on_ack``).

        Raises:
            NotConnectedError: the connection is gone.
        """
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotConnectedError(f"publish failed: {paho.error_string(info.rc)}")
        return int(info.mid)

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe at QoS 1 (no wait for SUBACK).

        Raises:
            NotConnectedError: the connection is gone.
        """
        rc, _ = self._client.subscribe([(t, 1) for t in topics])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotConnectedError(f"subscribe failed: {paho.error_string(rc)}")

    def socket(self) -> socket.socket | None:
        """The underlying socket (fault-injection tests shut it down to fake a crash)."""
        sock = self._client.raw_socket()
        return sock if isinstance(sock, socket.socket) else None

    def close(self, final: Will | None = None, timeout_s: float = 2.0) -> None:
        """End the connection; with ``final``, publish it first (a clean ``offline``).

        A clean DISCONNECT suppresses the broker's last will, hence ``final``.
        """
        if final is not None and self.connected:
            try:
                info = self._client.publish(final.topic, final.payload, qos=1,
                                            retain=final.retain)
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as e:
                log.info("final publish not confirmed: %s", e)
        self._client.disconnect()
        self._client.loop_stop()
        self._down.set()

    # -- paho callbacks (network thread; never raise) --------------------------------

    def _cb_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        try:
            if reason.is_failure:
                self._refusal = str(reason)
            self._settled.set()
        except Exception:
            log.exception("on_connect failed")

    def _cb_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        try:
            self._mark_down()
        except Exception:
            log.exception("on_connect_fail failed")

    def _cb_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        try:
            log.info("disconnected from broker: %s", reason)
            self._mark_down()
        except Exception:
            log.exception("on_disconnect failed")

    def _cb_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        try:
            if reason.is_failure:  # MQTT 5 PUBACK with an error: not delivered
                log.warning("broker rejected publish %d: %s", mid, reason)
                return
            self._on_ack(mid)
        except Exception:
            log.exception("on_publish failed")

    def _cb_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._on_message(message.topic, bytes(message.payload))
        except Exception:
            log.exception("on_message failed")

    def _mark_down(self) -> None:
        first = not self._down.is_set()
        self._down.set()
        self._settled.set()
        if first:
            self._on_down()
