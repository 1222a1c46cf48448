"""A restarted fleet server starts its SuperLink on the same address with the same CA,
so SuperNodes that joined before reconnect on their own (real flower-superlink)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from edgefleet.fleet_server.fljobs.federation import PORT_FILE, FederationManager
from tests.federated.conftest import DigitsSplit
from tests.fleet_server.fljobs.conftest import make_fl_env


def _start(work: Path) -> tuple[FederationManager, str, bytes]:
    manager = FederationManager(work)
    info = manager.join_info()
    return manager, info["superlink"], info["ca_cert"].encode()


def test_the_superlink_keeps_its_address_and_ca_across_server_restarts(
        tmp_path: Path) -> None:
    work = tmp_path / "federation"
    first, address, ca = _start(work)
    first.stop()
    second, address2, ca2 = _start(work)
    try:
        assert (address2, ca2) == (address, ca)
    finally:
        second.stop()

    # the remembered port is taken by someone else meanwhile: a new port, remembered
    port = int(address.rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        third, address3, ca3 = _start(work)
        try:
            assert address3 != address and ca3 == ca
            assert (work / PORT_FILE).read_text().strip() == address3.rsplit(":", 1)[1]
        finally:
            third.stop()


def test_a_restarted_server_starts_the_superlink_for_registered_devices(
        tmp_path: Path, digits: DigitsSplit) -> None:
    """Devices with a registered node reconnect by themselves only if the SuperLink runs:
    the service starts it on its first tick after a restart, without waiting for a job."""
    env = make_fl_env(tmp_path, digits, autorun=True)
    try:
        env.seed_nodes()  # fl_nodes rows, as left by an earlier run of the server
        assert not env.svc.federation.started
        env.svc.tick()
        deadline = time.monotonic() + 120
        while not env.svc.federation.started and time.monotonic() < deadline:
            time.sleep(0.5)
        assert env.svc.federation.started
        assert env.svc.federation.join_info(start=False)["running"] is True
    finally:
        env.svc.close()
        env.services.store.close()
