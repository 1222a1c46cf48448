"""The one real end-to-end test: the agent's supervisor runs a real ``flower-supernode``.

A real SuperLink (TLS + SuperNode authentication, as a fleet runs it); the device's key
is made by the supervisor's key code and registered through the Control API (what the
fleet server does at enrollment); the node joins, is online at the SuperLink, and stops
cleanly: no process of its group survives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.daemon.feedback import FeedbackStore
from edgefleet.agent.federated.config import FederatedConfig, SupervisorPolicy
from edgefleet.agent.federated.nodekey import ensure_node_key
from edgefleet.agent.federated.supervisor import SuperNodeSupervisor
from edgefleet.agent.runtime import ModelRunner
from tests.agent.federated.conftest import Link, predict_and_label


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s:.0f} s")
        time.sleep(0.2)


def test_a_real_supernode_joins_the_superlink_and_stops_without_orphans(
    tmp_path: Path, superlink: Link, store: FeedbackStore, runner: ModelRunner
) -> None:
    predict_and_label(store, runner, 12)
    work = tmp_path / "federated"
    key = ensure_node_key(work / "node.key")  # the key the supervisor will use
    with superlink.superlink.control() as control:
        node_id = control.register_node(key.public_key_pem)
    config = FederatedConfig(enabled=True, superlink=superlink.superlink.address,
                             ca_cert=superlink.ca_cert, model="mlp", min_examples=10,
                             max_load_per_cpu=0.0)  # shared test box: never "busy"
    sup = SuperNodeSupervisor(config, store=store, work_dir=work,
                              policy=SupervisorPolicy(check_s=0.5))

    def online() -> bool:
        with superlink.superlink.control() as control:
            return any(n.node_id == node_id and n.status == "online"
                       for n in control.list_nodes())

    sup.start()
    try:
        wait_until(lambda: sup.node_id == node_id, 60, f"node {node_id} joined "
                   f"(log: {sup.log_path})")
        wait_until(online, 30, "node online at the SuperLink")
        status = sup.status()
        assert status == {"state": "running", "reason": "", "examples": 12, "restarts": 0,
                          "node_id": node_id}
        pgid = sup.pid
        assert pgid is not None and pgid in group_members(pgid)
    finally:
        sup.stop()
    assert sup.status()["state"] == "off"
    wait_until(lambda: not group_members(pgid), 10, "no process left in the node's group")
    wait_until(lambda: not online(), 30, "node no longer online")
