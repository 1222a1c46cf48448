"""The ``edgefleet server run`` process: waitress + embedded broker + scheduler.

:class:`FleetServer` binds the HTTP port first (so a taken port fails before anything
else starts), then starts the embedded amqtt broker (unless ``mqtt_url`` names an
external one) and the scheduler. :func:`run_server` adds SIGTERM/SIGINT handling: the
first signal stops accepting requests, lets in-flight requests finish (up to waitress's
5 s), stops the scheduler and the broker and closes the database.

Scheduled jobs: the platform's own ``housekeeping`` (a WAL checkpoint) plus any feature
package that exposes ``jobs(services) -> list[tuple[name, interval_s, fn]]``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

from edgefleet.fleet_server.app import create_app, feature_modules
from edgefleet.fleet_server.broker import BrokerError, BrokerPortInUse, EmbeddedBroker
from edgefleet.fleet_server.broker_auth import ServerBrokerAuth
from edgefleet.fleet_server.config import ServerConfig
from edgefleet.fleet_server.datadir import load_secrets
from edgefleet.fleet_server.devices import device_service
from edgefleet.fleet_server.ingest import IngestionHandle, start_ingestion
from edgefleet.fleet_server.rollouts.service import PUBLISH_KEY
from edgefleet.fleet_server.scheduler import Scheduler
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

Job = tuple[str, float, Callable[[], None]]


# amqtt logs every packet at DEBUG, CONNECT packets with their password: never go below INFO.
# transitions (amqtt's state machine) narrates every state change at INFO.
_LOG_FLOORS = {"amqtt": logging.INFO, "transitions": logging.WARNING}


def cap_third_party_logging() -> None:
    """Keep chatty or secret-leaking third-party loggers at a safe minimum level."""
    for name, floor in _LOG_FLOORS.items():
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < floor:
            logger.setLevel(floor)


class ServerError(RuntimeError):
    """The server cannot start (the operator's environment: ports, data dir)."""


class PortInUse(ServerError):
    """A listen address is taken by another process."""


class _Stop(KeyboardInterrupt):
    """Raised in the main thread by the first SIGTERM/SIGINT; waitress stops on it."""


class FleetServer:
    """One running fleet server (HTTP API, optional embedded broker, scheduler)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._store: Store | None = None
        self._http: Any = None
        self._broker: EmbeddedBroker | None = None
        self._scheduler: Scheduler | None = None
        self._ingest: IngestionHandle | None = None
        self.services: Services | None = None
        self._started = False

    @property
    def http_url(self) -> str:
        """``http://host:port`` (the real port once started)."""
        port = self._http.effective_port if self._http is not None else self.config.port
        return f"http://{self.config.host}:{port}"

    @property
    def mqtt_url(self) -> str:
        """The broker in use: external ``mqtt_url`` or the embedded broker's address."""
        if self.config.mqtt_url:
            return self.config.mqtt_url
        if self._broker is not None:
            return self._broker.url
        return f"mqtt://{self.config.mqtt_host}:{self.config.mqtt_port}"

    def start(self) -> None:
        """Open the data dir, bind HTTP, start the broker, telemetry ingestion and scheduler.

        Raises:
            PortInUse: the HTTP or MQTT port is taken.
            ServerError: the HTTP listener or the broker failed otherwise.
            DataDirError: the data dir is not initialised or its secrets file is unsafe.
            StorageError: the database cannot be opened or migrated.
        """
        cap_third_party_logging()
        secrets = load_secrets(self.config.data_dir)
        self._store = Store.open(self.config.db_path)
        app = create_app(self.config, self._store, secrets=secrets)
        services: Services = app.extensions["edgefleet"]
        self.services = services
        try:
            self._http = create_server(
                app, host=self.config.host, port=self.config.port,
                threads=self.config.waitress_threads,
                # waitress buffers this much of ANY request (public routes too) before the
                # app can refuse it: max_upload_bytes is kept moderate (64 MiB) for that.
                max_request_body_size=self.config.max_upload_bytes,
                ident="edgefleet", clear_untrusted_proxy_headers=True,
            )
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"cannot serve HTTP: {self.config.host}:{self.config.port} is already in "
                    "use (stop the other process or choose another --port)") from e
            raise ServerError(f"cannot serve HTTP on {self.config.host}:{self.config.port}: "
                              f"{e.strerror or e}") from e
        if not self.config.mqtt_url:
            try:
                self._start_broker(services, secrets.broker_username)
            except BrokerPortInUse as e:
                raise PortInUse(str(e)) from e
            except BrokerError as e:
                raise ServerError(str(e)) from e
        # Telemetry ingestion subscribes as the server's own broker account, to the embedded
        # broker or the external one; it connects (and reconnects) in the background.
        # A persistent broker session keeps messages for the server while it is down; its
        # client id is stable per installation but distinct between installations that
        # share one external broker (derived from, never revealing, the session key).
        installation = hashlib.sha256(b"ingest:" + secrets.session_key.encode()).hexdigest()
        self._ingest = start_ingestion(services, self.mqtt_url, secrets.broker_username,
                                       secrets.broker_password,
                                       client_id=f"edgefleet-ingest-{installation[:12]}")
        # Rollouts send retained ``desired`` hints through the same connection.
        services.extras[PUBLISH_KEY] = self._ingest.subscriber.publish
        self._start_scheduler(services)
        self._started = True
        log.info("fleet server listening on %s (MQTT %s)", self.http_url, self.mqtt_url)

    def _start_broker(self, services: Services, service_user: str) -> None:
        assert self._store is not None
        auth = ServerBrokerAuth(self._store, device_service(services), service_user)
        broker = EmbeddedBroker(self.config.mqtt_host, self.config.mqtt_port, auth=auth)
        broker.start()
        self._broker = broker
        # Decommissioning a device drops its live connections through this hook.
        services.broker = broker
        if broker.port != self.config.mqtt_port:  # port 0: tell devices the real one
            services.config = dataclasses.replace(services.config, mqtt_port=broker.port)

    def _jobs(self, services: Services) -> list[Job]:
        store = services.store

        def housekeeping() -> None:
            store.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

        jobs: list[Job] = [("housekeeping", self.config.housekeeping_interval_s, housekeeping)]
        for module in feature_modules():
            provider = getattr(module, "jobs", None)
            if provider is not None:
                jobs.extend(provider(services))
        return jobs

    def _start_scheduler(self, services: Services) -> None:
        scheduler = Scheduler()
        for name, interval_s, fn in self._jobs(services):
            scheduler.every(name, interval_s, fn)
        scheduler.start()
        self._scheduler = scheduler

    def serve(self) -> None:
        """Serve HTTP until a KeyboardInterrupt / SystemExit (what the signal handler raises)."""
        if self._http is None:
            raise ServerError("start() the server first")
        self._http.run()

    def _close_features(self) -> None:
        """Stop the features' own threads and children (the rollout carrier, the
        federated-job worker and SuperLink, the drift webhook) before the store closes."""
        services = self.services
        if services is None:
            return
        from edgefleet.fleet_server.fleetdrift.service import FleetDriftService
        from edgefleet.fleet_server.fljobs.service import FlJobService
        from edgefleet.fleet_server.rollouts.service import RolloutService

        for feature in list(services.extras.values()):
            if isinstance(feature, RolloutService | FlJobService | FleetDriftService):
                try:
                    feature.close()
                except Exception:
                    log.exception("error while stopping %s", type(feature).__name__)

    def stop(self) -> None:
        """Stop everything that was started, in reverse order. Idempotent, never raises."""
        http, self._http = self._http, None
        if http is not None:
            try:
                http.task_dispatcher.shutdown()
                http.close()
                wasyncore.close_all(http._map)
            except Exception:
                log.exception("error while stopping the HTTP server")
        for name in ("_scheduler", "_ingest", "_broker"):
            part = getattr(self, name)
            setattr(self, name, None)
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    log.exception("error while stopping %s", name.strip("_"))
        self._close_features()
        store, self._store = self._store, None
        if store is not None:
            store.close()
        if self._started:
            self._started = False
            log.info("fleet server stopped")


@contextmanager
def _signals_stop() -> Iterator[threading.Event]:
    """While active, the first SIGTERM/SIGINT raises :class:`_Stop` in the main thread."""
    stopping = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return  # already shutting down: ignore repeated signals
        stopping.set()
        log.info("received %s, shutting down", signal.Signals(signum).name)
        raise _Stop

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopping
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_server(config: ServerConfig,
               on_ready: Callable[[FleetServer], None] | None = None) -> None:
    """Start the server, call ``on_ready``, serve until SIGTERM/SIGINT, then stop cleanly.

    Must run in the main thread (signal handlers).

    Raises:
        PortInUse, ServerError, DataDirError, StorageError: start-up failed (everything
            started is stopped again).
    """
    server = FleetServer(config)
    with _signals_stop() as stopping:
        try:
            server.start()
            if on_ready is not None:
                on_ready(server)
            if not stopping.is_set():
                server.serve()
        except _Stop:
            pass
        finally:
            server.stop()
