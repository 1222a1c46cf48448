"""An amqtt 0.11 ``Broker`` with three security fixes the stock broker lacks.

1. Authenticate *before* touching existing sessions. Stock amqtt reads the CONNECT
   and, before any password check, deletes the session of the same client id
   (clean session) or copies the new username onto it (persistent session): any
   unauthenticated client could knock a device's subscriptions away. Here a refused
   CONNECT gets CONNACK 5 (not authorised) and changes nothing.
2. A client id held by a session of another username is refused (CONNACK 2), so
   device A cannot take over or inherit device B's session.
3. Retained messages go only to the session's own subscriptions and pass the
   per-delivery (receive) topic check. Stock amqtt, on every connect, sends the new
   client the retained messages matching *every* filter anyone subscribed to.

It also adds what :class:`EmbeddedBroker` needs around amqtt: the bound port,
:meth:`HardenedBroker.disconnect_user` (credential revocation) and
:meth:`HardenedBroker.force_close` (a bounded stop when amqtt's shutdown hangs).

These override private methods of amqtt 0.11.x (pinned in pyproject); the tests in
tests/fleet_server/broker/ fail if an upgrade changes the behaviour underneath.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, ListenerConfig
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id

logger = logging.getLogger(__name__)


class HardenedBroker(Broker):
    """amqtt ``Broker`` that authenticates first and keeps retained messages private."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._preauthenticated: set[int] = set()
        self._connections: set[asyncio.StreamWriter] = set()

    # -- additions used by EmbeddedBroker -----------------------------------------

    def bound_port(self, listener: str) -> int | None:
        """The TCP port ``listener`` really listens on (for ``port=0``), if known."""
        server = self._servers.get(listener)
        sockets = getattr(getattr(server, "instance", None), "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else None

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        # Track every raw connection, authenticated or not, so force_close reaches all.
        self._connections.add(writer)
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            self._connections.discard(writer)

    async def disconnect_user(self, username: str) -> int:
        """Drop the connections and stored sessions of ``username``; returns how many.

        The transport is aborted first (never blocks on a client that stopped reading),
        then amqtt's own cleanup removes the session and its subscriptions, so no
        messages queue up for revoked credentials.
        """
        victims = [cid for cid, (s, _) in self._sessions.items() if s.username == username]
        for client_id in victims:
            _, handler = self._sessions[client_id]
            _abort(getattr(getattr(handler, "writer", None), "_writer", None))
            await self._cleanup_session(client_id)
        return len(victims)

    def force_close(self) -> None:
        """Close the listeners and abort every client connection, right now.

        Last wills are dropped first: the broker is going away, not the devices.
        """
        for session, _ in self._sessions.values():
            session.will_flag = False
        for server in self._servers.values():
            instance = getattr(server, "instance", None)
            if instance is not None:
                instance.close()
        for writer in list(self._connections):
            _abort(writer)

    # -- security fixes -------------------------------------------------------------

    async def _initialize_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        remote_address: str,
        remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except MQTTError as exc:
            with contextlib.suppress(OSError):
                await writer.close()
            raise AMQTTError(f"invalid CONNECT from {remote_address}:{remote_port}: {exc}") from exc
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(f"no CONNECT from {remote_address}:{remote_port}: {exc}") from exc

        # Fix 1: the password check comes before any session bookkeeping.
        if not await super()._authenticate(session, ListenerConfig()):
            await self._refuse(writer, NOT_AUTHORIZED)
            raise AMQTTError(f"not authorised: {session.username!r} from {remote_address}")

        # Fix 2: a client id belongs to the username that created its session.
        existing = self._sessions.get(session.client_id) if session.client_id else None
        if existing is not None and existing[0].username != session.username:
            await self._refuse(writer, IDENTIFIER_REJECTED)
            raise AMQTTError(
                f"client id {session.client_id!r} belongs to another user;"
                f" refused {session.username!r}"
            )

        # From here on: amqtt 0.11.4's own session handling, unchanged.
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif existing is not None:
            old = existing[0]
            old.will_flag = session.will_flag
            old.will_message = session.will_message
            old.will_topic = session.will_topic
            old.will_qos = session.will_qos
            old.will_retain = session.will_retain
            old.keep_alive = session.keep_alive
            old.username = session.username
            old.password = session.password
            session = old
            session.parent = 1
        else:
            session.parent = 0

        delay = self.config.get("timeout-disconnect-delay", 0) if self.config else 0
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        self._preauthenticated.add(id(session))
        return handler, session

    async def _authenticate(self, session: Session, _: ListenerConfig) -> bool:
        # Called by amqtt right after _initialize_client_session; the real check ran there.
        if id(session) in self._preauthenticated:
            self._preauthenticated.discard(id(session))
            return True
        return False

    @staticmethod
    async def _refuse(writer: WriterAdapter, return_code: int) -> None:
        # The client may already be gone: a refusal must not raise anything but AMQTTError.
        with contextlib.suppress(OSError):
            try:
                await ConnackPacket.build(0, return_code).to_stream(writer)
                await writer.drain()
            finally:
                await writer.close()

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # Fix 3: only this session's own filters, and only topics it may receive.
        topic_filter = subscription[0]
        granted = [qos for s, qos in self._subscriptions.get(topic_filter, []) if s is session]
        handler = self._get_handler(session)
        if not granted or handler is None:
            return
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic, Action.RECEIVE):
                continue
            qos = min(granted[0], retained.qos if retained.qos is not None else granted[0])
            tasks.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(retained.topic, retained.data, qos, retain=True)
                )
            )
        if tasks:
            await asyncio.wait(tasks)


def _abort(writer: object) -> None:
    transport = getattr(writer, "transport", None)
    if isinstance(transport, asyncio.BaseTransport) and hasattr(transport, "abort"):
        transport.abort()
