"""The SuperLink the fleet server supervises (nodes are the devices, not the server).

:class:`FederationManager` lazily starts one :class:`~edgefleet.federated.flower.processes.
Federation` in ``<data dir>/federation`` with TLS and SuperNode authentication on, the
first time something needs it (a node registration, a job run), and stops it with the
server. It is the only place in the server that talks to Flower's Control API.

A crashed SuperLink is restarted by the ``Federation`` supervisor on the same port with
the same TLS files and state database: the join information stays valid, registrations
survive and SuperNodes reconnect on their own. A restarted *server* starts its SuperLink
on the port of the last start (``superlink.port`` in the work dir) with the same CA
(renewed only within 30 days of expiry), so the same holds across server restarts.
:meth:`FederationManager.generation` tells the job runner that the process was
replaced (its runs in flight are then ended and resumed from the last registry checkpoint).

What a device needs to join: the SuperLink's fleet address and the CA certificate
(:meth:`FederationManager.join_info`), plus its own key registered through
:meth:`FederationManager.register_node` (``POST /fl/nodes``, ``POST /device/fl-node``).

Unregistering (decommission, key replacement): Flower 1.41's Control API has
``UnregisterNode(node_id)`` (``/v1/control/unregister-node``, what ``flwr supernode
unregister`` calls). It does not delete the node: the SuperLink marks it ``unregistered``
(``online_until`` cut to now), ``ListNodes`` keeps listing it with that status, the node
can no longer activate, and its public key stays taken (``RegisterNode`` with the same key
is refused: "Public key already in use"). A second unregister of the same node is refused
(``NODE_NOT_FOUND``). ``ControlClient`` has no wrapper for it yet; :meth:`unregister_node`
calls Flower's ``ControlHttpClient.UnregisterNode`` through it.
"""

from __future__ import annotations

import atexit
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgefleet.fleet_server.fljobs.errors import FederationUnavailable, JobConflict

logger = logging.getLogger(__name__)

ConfigValue = bool | int | float | str
PORT_FILE = "superlink.port"  # in the work dir: the port of the last start


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as servers bind: connections of the last run in TIME_WAIT do not block it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class FederationManager:
    """Owns the server's SuperLink (see module docstring). Thread-safe."""

    def __init__(self, work_dir: Path, *,
                 on_start: Callable[[Any], None] | None = None) -> None:
        """``on_start(federation)`` runs once after each start, before anyone else uses the
        SuperLink (the service reconciles node registrations); its errors are logged."""
        self.work_dir = work_dir
        self._on_start = on_start
        self._lock = threading.Lock()
        self._federation: Any = None  # Federation, imported lazily (flwr is heavy)
        self._starts = 0  # Federation objects started by this manager

    @property
    def started(self) -> bool:
        """The SuperLink was started by this manager and not stopped."""
        return self._federation is not None

    def federation(self) -> Any:
        """The running ``Federation``, started on first use.

        Raises:
            FederationUnavailable: flwr missing or the SuperLink does not start.
        """
        with self._lock:
            if self._federation is None:
                try:
                    from edgefleet.federated.flower.errors import FlowerRuntimeError
                    from edgefleet.federated.flower.processes import Federation
                except ImportError as e:
                    raise FederationUnavailable(
                        f"federated training needs edgefleet[federated] (flwr): {e}") from e
                self.work_dir.mkdir(parents=True, exist_ok=True)
                federation = self._start(Federation, FlowerRuntimeError)
                logger.info("SuperLink started at %s", federation.superlink.address)
                self._federation = federation
                self._starts += 1
                # Its children run in their own process groups: do not orphan them when
                # the server exits without closing the feature.
                atexit.register(self.stop)
                if self._on_start is not None:
                    try:
                        self._on_start(federation)
                    except Exception:  # the SuperLink itself is usable
                        logger.exception("SuperLink start hook failed")
            return self._federation

    def _start(self, federation_cls: Any, flower_error: type[Exception]) -> Any:
        """Start on the port of the last start (``superlink.port``) so SuperNodes that
        joined before a server restart reconnect on their own (same CA, see
        ``ensure_tls_files``); on a new free port when that one is taken."""
        port_file = self.work_dir / PORT_FILE
        try:
            remembered: int | None = int(port_file.read_text().strip())
        except (OSError, ValueError):
            remembered = None
        if remembered is not None and not _port_free(remembered):
            logger.warning("SuperLink port %d is taken; starting on a new one (devices join "
                           "again)", remembered)
            remembered = None
        try:
            federation = federation_cls(self.work_dir, supernode_auth=True, port=remembered)
            federation.start()
        except (flower_error, OSError) as e:
            raise FederationUnavailable(f"cannot start the SuperLink: {e}") from e
        port_file.write_text(f"{federation.superlink.port}\n")
        return federation

    def generation(self) -> tuple[int, int] | None:
        """Which SuperLink process is current: (starts by this manager, restarts of it by
        the supervisor), None when not started. It changes whenever the SuperLink process
        was replaced (a crash restarted by the supervisor, a stop and a new start): the
        ServerApps of runs in flight did not survive that reliably, so the job runner ends
        such runs and resumes from the last checkpoint as a new run."""
        with self._lock:
            federation = self._federation
            if federation is None:
                return None
            return (self._starts, int(federation.superlink.process.restarts))

    def join_info(self, *, start: bool = True) -> dict[str, Any]:
        """What a device's SuperNode needs: ``superlink`` address and ``ca_cert`` PEM.

        With ``start=False`` a SuperLink that is not running is not started: the answer
        is ``{"running": false}``.
        """
        if not start and not self.started:
            return {"running": False}
        superlink = self.federation().superlink
        return {"running": True, "superlink": superlink.address,
                "ca_cert": superlink.tls.ca_cert.read_text(), "supernode_auth": True}

    def register_node(self, public_key_pem: bytes) -> int:
        """Register a SuperNode public key (PEM SubjectPublicKeyInfo); its node id.

        Raises:
            JobConflict: the SuperLink refused the key (for example registered already).
            FederationUnavailable: the SuperLink cannot be started.
        """
        from edgefleet.federated.flower.errors import RunError

        with self.federation().superlink.control() as control:
            try:
                return int(control.register_node(public_key_pem))
            except RunError as e:
                raise JobConflict(str(e)) from e

    def unregister_node(self, node_id: int) -> bool:
        """Unregister a node at the SuperLink; False when it knows no such active node.

        Raises:
            FederationUnavailable: the SuperLink cannot be started or reached.
        """
        return unregister_node(self.federation(), node_id)

    def node_status(self, node_id: int) -> str | None:
        """The SuperLink's status of a node (``registered``, ``online``, ``offline``,
        ``unregistered``), None when it does not list it.

        Raises:
            FederationUnavailable: the Control API cannot be reached.
        """
        from edgefleet.federated.flower.errors import RunError

        try:
            with self.federation().superlink.control() as control:
                nodes = control.list_nodes()
        except RunError as e:
            raise FederationUnavailable(str(e)) from e
        return next((n.status for n in nodes if n.node_id == node_id), None)

    def online_node_ids(self) -> set[int]:
        """Node ids the SuperLink currently lists as online.

        Raises:
            FederationUnavailable: the Control API cannot be reached.
        """
        from edgefleet.federated.flower.errors import RunError

        try:
            return {n.node_id for n in self.federation().online_nodes()}
        except RunError as e:
            raise FederationUnavailable(str(e)) from e

    def submit_run(self, run_config: Mapping[str, ConfigValue]) -> int:
        """Start a run of the edgefleet apps; its run id.

        Raises:
            RunError: the SuperLink rejected the run.
        """
        return int(self.federation().submit_run(None, run_config))

    def run_state(self, run_id: int) -> Any:
        """The run's ``RunState``. Raises RunError."""
        with self.federation().superlink.control() as control:
            return control.run_state(run_id)

    def stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop a run (errors are logged: the run may have ended)."""
        from edgefleet.federated.flower.errors import RunError

        try:
            with self.federation().superlink.control() as control:
                control.stop_run(run_id)
        except (RunError, FederationUnavailable) as e:
            logger.info("stopping run %s: %s", run_id, e)

    def stop(self) -> None:
        """Stop the SuperLink (its state database stays). Idempotent."""
        with self._lock:
            federation, self._federation = self._federation, None
        if federation is not None:
            atexit.unregister(self.stop)
            federation.stop()


def unregister_node(federation: Any, node_id: int) -> bool:
    """``UnregisterNode`` on ``federation``'s SuperLink; False when the SuperLink knows no
    such active node (unknown or already unregistered).

    Raises:
        FederationUnavailable: the Control API cannot be reached.
    """
    from edgefleet.federated.flower.errors import RunError

    with federation.superlink.control() as control:
        try:
            control.unregister_node(node_id)
        except RunError as e:
            if "unreachable" in str(e):
                raise FederationUnavailable(str(e)) from e
            logger.info("unregistering node %s: %s", node_id, e)
            return False
    logger.info("Flower node %s unregistered", node_id)
    return True
