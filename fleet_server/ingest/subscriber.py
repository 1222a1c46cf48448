"""The MQTT side of ingestion: one paho-mqtt 2.x client (VERSION2 callbacks) subscribed
to ``edgefleet/v1/d/+/+`` at QoS 1 as the server's broker service user.

Callbacks never raise and never block on the database: ``on_message`` hands the message
to the :class:`Ingester` queue. Acknowledgements are manual: the PUBACK of a message is
sent after the batch holding it committed, the PUBACKs of a batch as one write, and only
on the connection that delivered the message (after a reconnect the broker re-sends what
was not acknowledged, and a PUBACK with an old message id could acknowledge a different,
not yet committed message). The client is :class:`FastClient` (buffered socket reads,
see ``edgefleet.agent.telemetry.transport``). The session is persistent
(``clean_session=False``, a fixed client id): messages published while ingestion is down
are queued by the broker and delivered on reconnect. paho reconnects by itself
(``reconnect_delay_set``) and ``on_connect`` re-subscribes.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.telemetry.envelope import device_filter
from edgefleet.agent.telemetry.errors import BrokerConfigError
from edgefleet.agent.telemetry.mqtt import BrokerConfig
from edgefleet.agent.telemetry.transport import FastClient
from edgefleet.fleet_server.ingest.errors import IngestConfigError
from edgefleet.fleet_server.ingest.writer import Ingester

log = logging.getLogger(__name__)

DEFAULT_CLIENT_ID = "edgefleet-ingest"


class MqttSubscriber:
    """Feeds every device message from the broker at ``url`` into ``ingester``."""

    def __init__(self, ingester: Ingester, url: str, username: str | None,
                 password: str | None, *, client_id: str = DEFAULT_CLIENT_ID,
                 persistent: bool = True, keepalive_s: int = 30) -> None:
        try:
            self.broker = BrokerConfig.from_url(url, username, password)
        except BrokerConfigError as e:
            raise IngestConfigError(str(e)) from e
        self.ingester = ingester
        self.keepalive_s = keepalive_s
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connects = 0
        self._generation = 0  # changes on every connect and disconnect
        self._acks: list[tuple[int, int]] = []  # (generation, mid) committed, not sent
        self._acks_lock = threading.Lock()
        client = FastClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                            clean_session=not persistent)
        client.manual_ack_set(True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if username is not None:
            client.username_pw_set(username, password)
        if self.broker.tls:
            ca = str(self.broker.ca_file) if self.broker.ca_file else None
            client.tls_set(ca_certs=ca)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        ingester.after_acks = self.flush_acks

    def start(self) -> MqttSubscriber:
        """Connect in the background (retrying until the broker is reachable)."""
        self._client.connect_async(self.broker.host, self.broker.port, self.keepalive_s)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread (unacknowledged messages stay queued
        at the broker for the persistent session)."""
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, retain: bool) -> bool:
        """Publish a server → device message at QoS 1 (``desired`` hints, commands).

        Returns False when the client is not connected (paho would queue it; a hint that
        is stale by the time the broker is back is worse than none).
        """
        if not self.connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def flush_acks(self) -> None:
        """Send the PUBACKs collected since the last flush (the writer thread calls this
        after each batch); those of an earlier connection are dropped."""
        with self._acks_lock:
            acks, self._acks = self._acks, []
            generation = self._generation
        mids = [mid for gen, mid in acks if gen == generation]
        if mids:
            self._client.ack_many(mids)

    def _ack(self, generation: int, mid: int) -> None:
        self._acks.append((generation, mid))

    def _next_generation(self) -> None:
        with self._acks_lock:
            self._generation += 1
            self._acks.clear()

    # -- paho callbacks: never raise ------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        try:
            if getattr(reason, "is_failure", False):
                log.warning("ingest: broker refused the connection: %s", reason)
                return
            self.connects += 1
            self._next_generation()
            self.connected.set()
            client.subscribe(device_filter(), qos=1)
            log.info("ingest: connected to %s:%s", self.broker.host, self.broker.port)
        except Exception:
            log.exception("ingest: on_connect failed")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        try:
            self.connected.clear()
            self.subscribed.clear()
            self._next_generation()
            log.info("ingest: disconnected (%s)", reason)
        except Exception:
            log.exception("ingest: on_disconnect failed")

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                      reason_codes: Any, properties: Any) -> None:
        try:
            if any(getattr(rc, "is_failure", False) for rc in reason_codes):
                log.error("ingest: subscription to %s refused: %s", device_filter(),
                          reason_codes)
                return
            self.subscribed.set()
        except Exception:
            log.exception("ingest: on_subscribe failed")

    def _on_message(self, client: paho.Client, userdata: Any,
                    msg: paho.MQTTMessage) -> None:
        try:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = repr(msg._topic)  # counted as a topic rejection
            ack = partial(self._ack, self._generation, msg.mid) if msg.qos > 0 else None
            if not self.ingester.submit(topic, msg.payload, ack):
                log.debug("ingest: message on %s not queued", topic)
        except Exception:
            log.exception("ingest: on_message failed")
