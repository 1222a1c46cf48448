"""The embedded MQTT broker: amqtt run in-process on its own thread and event loop.

amqtt's own ``Broker.shutdown`` can hang: it drains every client socket (for ever when a
client stopped reading), waits up to 30 s for in-flight deliveries, and can lose the
cancellation of a reader task (then it waits for ever). :meth:`EmbeddedBroker.stop`
therefore closes the listeners and aborts every client connection first, then gives
amqtt's cleanup a grace period: stopping takes milliseconds and at most about
``3 * stop_grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from .auth import BrokerAuth
from .errors import BrokerError, BrokerPortInUse

if TYPE_CHECKING:  # amqtt is imported only when a broker starts
    from .hardened import HardenedBroker

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
DEFAULT_STOP_GRACE_S = 2.0  # amqtt's own shutdown gets this long before connections are cut
DISCONNECT_TIMEOUT_S = 10.0
_PLUGINS_MODULE = f"{__package__}.plugins"
AUTH_PLUGIN = f"{_PLUGINS_MODULE}.EdgefleetAuthPlugin"
TOPIC_PLUGIN = f"{_PLUGINS_MODULE}.EdgefleetTopicPlugin"


class EmbeddedBroker:
    """An MQTT 3.1.1 broker for one-machine installs (Mosquitto is for production).

    Every connection must authenticate through ``auth`` (no anonymous access); every
    publish, subscribe, last will and delivery is checked with ``auth.may_publish`` /
    ``auth.may_subscribe``. Retained messages and last wills work; retained messages
    live in memory only and are lost on :meth:`stop`.

    ``port=0`` picks a free port; :attr:`port` and :attr:`url` give the real one after
    :meth:`start` (a later restart reuses it). Implements the ``BrokerControl`` hook of
    :class:`edgefleet.fleet_server.services.Services` through :meth:`disconnect`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        auth: BrokerAuth,
        *,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        if not isinstance(auth, BrokerAuth):
            raise TypeError("EmbeddedBroker needs a BrokerAuth: there is no anonymous mode")
        if stop_grace_s <= 0:
            raise ValueError("stop_grace_s must be positive")
        self.host = host
        self._port = port
        self._auth = auth
        self._stop_grace_s = stop_grace_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: HardenedBroker | None = None
        self._stop_requested: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    @property
    def port(self) -> int:
        """The listening port (the real one once started with ``port=0``)."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._thread is not None

    def start(self) -> None:
        """Start listening; returns once clients can connect. No-op when running.

        Raises:
            BrokerPortInUse: host:port is taken by another process.
            BrokerError: amqtt failed to start for any other reason.
        """
        with self._lock:
            if self._thread is not None:
                return
            self._check_port_free()
            ready = threading.Event()
            self._startup_error = None
            thread = threading.Thread(
                target=self._run, args=(ready,), name=f"mqtt-broker-{self._port}", daemon=True
            )
            thread.start()
            if not ready.wait(START_TIMEOUT_S):
                raise BrokerError(f"MQTT broker on {self.host}:{self._port} did not start in time")
            if self._startup_error is not None:
                thread.join(self._stop_grace_s * 3)
                raise self._startup_error
            thread.name = f"mqtt-broker-{self._port}"
            self._thread = thread
            logger.info("embedded MQTT broker listening on %s", self.url)

    def stop(self) -> None:
        """Close every client connection and stop listening. Idempotent, bounded in time.

        Clients see a lost connection. If amqtt does not finish within the grace
        period, the remaining connections are aborted.
        """
        with self._lock:
            thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
            if thread is None:
                return
            self._thread = None
            if loop is not None and stop_requested is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(stop_requested.set)
            thread.join(self._stop_grace_s * 3 + 1.0)
            if thread.is_alive():
                logger.warning("embedded MQTT broker thread is still alive after stop()")
            logger.info("embedded MQTT broker on %s:%s stopped", self.host, self._port)

    def disconnect(self, username: str) -> None:
        """Drop every live connection and stored session of ``username``.

        Called after the user's broker credentials were revoked (device decommission);
        the next CONNECT then fails authentication. A no-op when the broker is stopped.
        Called from the broker's own thread (a BrokerAuth callback), it only schedules
        the disconnect.

        Raises:
            BrokerError: the broker did not complete the disconnect in time.
        """
        loop, broker, thread = self._loop, self._broker, self._thread
        if thread is None or loop is None or broker is None:
            return
        if threading.current_thread() is thread:  # from a broker callback: cannot wait
            loop.create_task(broker.disconnect_user(username))
            return
        try:
            future = asyncio.run_coroutine_threadsafe(broker.disconnect_user(username), loop)
        except RuntimeError:  # the loop closed between the check and the call
            return
        try:
            dropped = future.result(DISCONNECT_TIMEOUT_S)
        except TimeoutError as exc:
            future.cancel()
            raise BrokerError(f"timed out disconnecting MQTT user {username!r}") from exc
        logger.info("disconnected %d MQTT session(s) of %r", dropped, username)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------

    def _check_port_free(self) -> None:
        """Fail early with a clear message (amqtt itself logs a traceback first)."""
        if self._port == 0:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # Same option as amqtt's listener, so a port in TIME_WAIT is not "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self._port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise BrokerPortInUse(self.host, self._port) from exc
                raise BrokerError(
                    f"cannot bind MQTT broker to {self.host}:{self._port}: {exc}"
                ) from exc

    def _config(self) -> dict[str, Any]:
        plugin_options = {"auth": self._auth}
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self._port}"}},
            # Replaces amqtt's defaults: no anonymous plugin, no $SYS publisher.
            "plugins": {AUTH_PLUGIN: plugin_options, TOPIC_PLUGIN: dict(plugin_options)},
        }

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except Exception:
            logger.exception("embedded MQTT broker failed")
        finally:
            try:
                _cancel_pending(loop, self._stop_grace_s)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(_shutdown_executor(loop, self._stop_grace_s))
            finally:
                self._loop = None
                self._broker = None
                loop.close()
                ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        from .hardened import HardenedBroker  # amqtt is imported only when a broker starts

        self._stop_requested = asyncio.Event()
        try:
            broker = HardenedBroker(self._config(), loop=asyncio.get_running_loop())
            await broker.start()
        except Exception as exc:
            self._startup_error = self._translate(exc)
            ready.set()
            return
        self._broker = broker
        self._port = broker.bound_port("default") or self._port
        ready.set()
        await self._stop_requested.wait()
        await self._shutdown(broker)

    async def _shutdown(self, broker: HardenedBroker) -> None:
        """Cut every connection, then let amqtt clean up within the grace period.

        amqtt's own shutdown closes clients one by one and waits for each reader task
        to end; under Python 3.11 ``asyncio.wait_for`` can swallow that cancellation
        while PUBACKs are arriving, and a client that stopped reading blocks its
        socket drain: either hung ``stop()`` for 2-30 s or for ever. Aborting the
        transports first ends every reader with EOF at once.
        """
        broker.force_close()
        shutdown = asyncio.ensure_future(broker.shutdown())
        done, _ = await asyncio.wait({shutdown}, timeout=self._stop_grace_s)
        if not done:
            logger.warning(
                "amqtt shutdown still busy after %.1fs; aborting what is left",
                self._stop_grace_s,
            )
            broker.force_close()
            done, _ = await asyncio.wait({shutdown}, timeout=self._stop_grace_s)
        if not done:
            shutdown.cancel()
            return
        # amqtt's shutdown raises CancelledError when a QoS 1/2 delivery was in flight
        # (it cancels its own PUBACK waiters) and then skips closing the listeners.
        failure = asyncio.CancelledError() if shutdown.cancelled() else shutdown.exception()
        if failure is not None:
            logger.debug("amqtt shutdown ended early (%r); closing what is left", failure)
            broker.force_close()

    def _translate(self, exc: BaseException) -> BrokerError:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                error: BrokerError = BrokerPortInUse(self.host, self._port)
                break
            cause = cause.__cause__
        else:
            error = BrokerError(f"MQTT broker on {self.host}:{self._port} failed to start: {exc}")
        error.__cause__ = exc
        return error


def _cancel_pending(loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
    """Cancel what amqtt left running; some of its tasks swallow one cancellation."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=timeout_s))
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()  # mark as retrieved: amqtt's failures were logged already


async def _shutdown_executor(loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
    """Join the threads that ran ``BrokerAuth.authenticate``, without hanging on them."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop.shutdown_default_executor(), timeout_s)
