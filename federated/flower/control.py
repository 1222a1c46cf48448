"""Client of the SuperLink's Control API: submit runs, follow them, list and register nodes.

The ``flwr`` CLI (``flwr run``, ``flwr ls``, ``flwr supernode register``) cannot be used
here: with typer 0.15.4 (pinned by amqtt 0.11) it crashes at start-up with
``RuntimeError: Type not yet supported: typing.Literal['default', 'json']``. Flower 1.41
serves the Control API as protobuf over HTTP on the SuperLink's single port, so this
module does what the CLI does, with Flower's own ``ControlHttpClient`` and FAB builder.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx
from flwr.cli.build import build_fab_from_disk
from flwr.common.serde import fab_to_proto, run_from_proto, user_config_to_proto
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
    UnregisterNodeRequest,
)
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.error import FlowerError
from flwr.supercore.fab import Fab

from edgefleet.federated.flower.config import ConfigValue
from edgefleet.federated.flower.errors import RunError

_T = TypeVar("_T")

FINISHED = "finished"
COMPLETED = "completed"


@dataclass(frozen=True)
class RunState:
    """Status of a run as the SuperLink reports it."""

    run_id: int
    status: str  # pending, starting, running, finished
    sub_status: str  # completed, failed, stopped (when finished)
    details: str

    @property
    def finished(self) -> bool:
        """The run reached a final state."""
        return self.status == FINISHED

    @property
    def succeeded(self) -> bool:
        """The run finished and completed."""
        return self.finished and self.sub_status == COMPLETED


@dataclass(frozen=True)
class NodeStatus:
    """A SuperNode as the SuperLink sees it."""

    node_id: int
    status: str  # e.g. registered, online, offline, unregistered
    online_until: float


class ControlClient:
    """Talks to one SuperLink's Control API (``host:port``).

    ``ca_cert`` is the CA certificate to verify a TLS SuperLink; None means plain HTTP.
    """

    def __init__(self, address: str, *, ca_cert: Path | None = None) -> None:
        self.address = address
        self._client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=ca_cert is None,
            root_certificates=None if ca_cert is None else str(ca_cert),
            interceptors=[],
        )

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()

    def submit_run(self, app_dir: Path, run_config: Mapping[str, ConfigValue]) -> int:
        """Build a FAB from ``app_dir`` and start a run with ``run_config`` overrides.

        Raises:
            RunError: the SuperLink rejected the run or cannot be reached.
        """
        try:
            fab_bytes = build_fab_from_disk(app_dir)
        except (OSError, ValueError) as e:
            raise RunError(f"cannot build the Flower app from {app_dir}: {e}") from e
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        request = StartRunRequest(
            fab=fab_to_proto(fab),
            override_config=user_config_to_proto(dict(run_config)),
            federation="",
        )
        response = self._call("StartRun", lambda: self._client.StartRun(request))
        if not response.HasField("run_id"):
            raise RunError("the SuperLink did not start the run")
        return int(response.run_id)

    def run_state(self, run_id: int) -> RunState:
        """Current status of ``run_id``.

        Raises:
            RunError: unknown run or SuperLink unreachable.
        """
        response = self._call(
            "ListRuns", lambda: self._client.ListRuns(ListRunsRequest(run_id=run_id))
        )
        if run_id not in response.run_dict:
            raise RunError(f"run {run_id} not found", run_id=run_id)
        run = run_from_proto(response.run_dict[run_id])
        return RunState(run_id, run.status.status, run.status.sub_status, run.status.details)

    def wait_run(self, run_id: int, timeout_s: float, *, poll_s: float = 0.5) -> RunState:
        """Block until ``run_id`` finishes; its final state.

        Raises:
            RunError: the run failed or was stopped, or did not finish within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.run_state(run_id)
            if state.finished:
                if not state.succeeded:
                    raise RunError(
                        f"run {run_id} finished as {state.sub_status}: {state.details}",
                        run_id=run_id,
                        status=state.sub_status,
                    )
                return state
            if time.monotonic() >= deadline:
                raise RunError(
                    f"run {run_id} still {state.status} after {timeout_s:.0f} s",
                    run_id=run_id,
                    status=state.status,
                )
            time.sleep(poll_s)

    def stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop ``run_id``."""
        self._call("StopRun", lambda: self._client.StopRun(StopRunRequest(run_id=run_id)))

    def list_nodes(self) -> list[NodeStatus]:
        """Every node the SuperLink knows."""
        response = self._call("ListNodes", lambda: self._client.ListNodes(ListNodesRequest()))
        return [
            NodeStatus(int(n.node_id), str(n.status), float(n.online_until))
            for n in response.nodes_info
        ]

    def register_node(self, public_key: bytes) -> int:
        """Register a SuperNode's public key (SuperNode authentication); its node ID.

        ``public_key`` is the PEM SubjectPublicKeyInfo of the node's EC key.
        """
        response = self._call(
            "RegisterNode",
            lambda: self._client.RegisterNode(RegisterNodeRequest(public_key=public_key)),
        )
        return int(response.node_id)

    def unregister_node(self, node_id: int) -> None:
        """Unregister a SuperNode: it can no longer activate. Flower keeps listing it (as
        ``unregistered``) and never accepts its public key again.

        Raises:
            RunError: the node is unknown or already unregistered, or the Control API
                cannot be reached ("unreachable" in the message).
        """
        self._call("UnregisterNode",
                   lambda: self._client.UnregisterNode(UnregisterNodeRequest(node_id=node_id)))

    def _call(self, name: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except httpx.HTTPStatusError as e:
            error = FlowerError.from_json(e.response.text)
            detail = error.message if error is not None else e.response.text[:300]
            raise RunError(f"Control API {name} rejected: {detail}") from e
        except httpx.HTTPError as e:
            raise RunError(f"Control API {name} at {self.address} unreachable: {e}") from e
