"""A restarted fleet server starts its SuperLink on the same address with the same CA,
so SuperNodes that joined before reconnect on their own (real flower-superlink)."""

from __future__ import annotations

import socket
from pathlib import Path

from edgefleet.fleet_server.fljobs.federation import PORT_FILE, FederationManager


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
