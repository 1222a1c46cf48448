"""The agent joins the fleet server's federation by itself: a real fleet server over HTTP
(its own SuperLink, TLS + SuperNode authentication), a device enrolled with
``edgefleet.agent.enroll``, a supervisor configured without ``superlink`` / ``ca_cert``:
it registers its node key through the signed ``POST /device/fl-node``, stores the CA
(0600) and starts a real ``flower-supernode`` that comes online with the node id the
server gave it."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.serving import make_server

from edgefleet.agent.daemon.feedback import FeedbackStore
from edgefleet.agent.enroll import enroll, load_enrollment
from edgefleet.agent.federated.config import FederatedConfig, SupervisorPolicy
from edgefleet.agent.federated.errors import JoinError
from edgefleet.agent.federated.join import CA_FILE, JOIN_FILE, join_federation
from edgefleet.agent.federated.nodekey import ensure_node_key
from edgefleet.agent.federated.supervisor import SuperNodeSupervisor
from edgefleet.agent.runtime import ModelRunner
from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.devices.service import device_service
from edgefleet.fleet_server.fljobs import FlJobService, fljob_service
from edgefleet.fleet_server.services import Services
from tests.agent.federated.conftest import predict_and_label
from tests.agent.federated.test_federated_supernode import wait_until


@dataclass
class LiveServer:
    url: str
    services: Services

    @property
    def fl(self) -> FlJobService:
        return fljob_service(self.services)

    def enroll(self, state: Path) -> str:
        _, secret = self.services.extras["device_enrollment"].create_token(SYSTEM)
        return enroll(self.url, str(secret), state).device_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("fleet") / "data"
    init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}, session_cookie_secure=False))
    services: Services = app.extensions["edgefleet"]
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{httpd.server_port}", services)
    try:
        yield live
    finally:
        httpd.shutdown()
        thread.join()
        live.fl.close()
        services.store.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_agent_registers_its_key_and_its_supernode_joins(
        tmp_path: Path, server: LiveServer, store: FeedbackStore,
        runner: ModelRunner) -> None:
    state = tmp_path / "state"
    device_id = server.enroll(state)
    predict_and_label(store, runner, 12)
    config = FederatedConfig(enabled=True, model="mlp", min_examples=10,
                             max_load_per_cpu=0.0)  # no superlink / ca_cert: join
    work = state / "federated"
    sup = SuperNodeSupervisor(config, store=store, work_dir=work,
                              policy=SupervisorPolicy(check_s=0.5))
    sup.start()
    try:
        wait_until(lambda: sup.joined is not None, 60, "joined the federation")
        assert sup.joined is not None
        node_id = sup.joined.node_id
        assert server.fl.node_devices()[node_id] == device_id
        superlink = server.fl.federation.federation().superlink
        assert sup.joined.superlink == superlink.address
        assert sup.joined.ca_cert == work / CA_FILE
        assert (work / CA_FILE).read_text() == superlink.tls.ca_cert.read_text()
        assert mode(work / CA_FILE) == 0o600 and mode(work / JOIN_FILE) == 0o600
        assert json.loads((work / JOIN_FILE).read_text()) == {
            "node_id": node_id, "superlink": superlink.address}
        wait_until(lambda: sup.node_id == node_id, 60, f"node {node_id} running "
                   f"(log: {sup.log_path})")
        wait_until(lambda: server.fl.federation.node_status(node_id) == "online", 30,
                   "node online at the SuperLink")
    finally:
        sup.stop()
    # joining again with the same key keeps the node (what every child start does)
    again = join_federation(state, ensure_node_key(work / "node.key").public_key_pem,
                            work)
    assert again.node_id == node_id
    # decommissioned: the node is unregistered and the device can no longer join
    device_service(server.services).decommission(device_id, SYSTEM, "retired")
    assert server.fl.federation.node_status(node_id) == "unregistered"
    with pytest.raises(JoinError, match="HTTP 401"):
        join_federation(state, ensure_node_key(work / "node.key").public_key_pem, work)


def test_join_errors_name_the_cause(tmp_path: Path, server: LiveServer) -> None:
    key = ensure_node_key(tmp_path / "node.key").public_key_pem
    with pytest.raises(JoinError, match="not enrolled"):
        join_federation(tmp_path / "nowhere", key, tmp_path / "w")
    state = tmp_path / "state"
    server.enroll(state)
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(JoinError, match="HTTP 400 public_key must be an EC P-384"):
        join_federation(state, p256, tmp_path / "w")
    record = load_enrollment(state)
    record["server_url"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    (state / "enrollment.json").write_text(json.dumps(record))
    with pytest.raises(JoinError, match="unreachable"):
        join_federation(state, key, tmp_path / "w")
    with socket.socket() as silent:  # the kernel accepts the connection; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        record["server_url"] = f"http://127.0.0.1:{silent.getsockname()[1]}"
        (state / "enrollment.json").write_text(json.dumps(record))
        with pytest.raises(JoinError, match="did not answer the SuperNode key registration "
                                            "within 1 s"):
            join_federation(state, key, tmp_path / "w", timeout_s=1.0)
    assert not (tmp_path / "w" / CA_FILE).exists()
