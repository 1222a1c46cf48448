"""Fixtures for the Flower runtime tests: a real SuperLink with three real SuperNodes.

The federation runs the production setup: TLS with a private CA and SuperNode
authentication (every node's key registered through the Control API). A fourth,
unregistered "rogue" node is started alongside; the SuperLink must turn it away.
Nothing here is simulated and nothing skips: a missing flwr install fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from edgefleet.federated.flower.data import write_node_data
from edgefleet.federated.flower.processes import (
    NO_RESTART,
    Federation,
    RestartPolicy,
    SuperNode,
)
from edgefleet.federated.flower.tls import make_node_key
from edgefleet.tools.modelgen.digits import NODE_CLASS_GROUPS, non_iid_shards

N_NODES = 3
# Node i holds mostly the classes in CLASS_GROUPS[i] (non-IID, as on real devices).
CLASS_GROUPS = NODE_CLASS_GROUPS
OWN_SHARE = 0.85


@dataclass(frozen=True)
class DigitsSplit:
    """sklearn digits split into per-node non-IID shards and a central test set."""

    node_x: list[np.ndarray]
    node_y: list[np.ndarray]
    x_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_classes: int


@dataclass(frozen=True)
class FlowerSetup:
    """The running federation plus what the tests need to know about it."""

    federation: Federation
    node_ids: dict[str, int]  # node name -> node ID
    data: DigitsSplit
    rogue: SuperNode  # unregistered key: must be rejected


def split_digits(seed: int = 0) -> DigitsSplit:
    """Non-IID shards: each node gets OWN_SHARE of its examples from its class group."""
    shards = non_iid_shards(seed, own_share=OWN_SHARE, class_groups=CLASS_GROUPS)
    return DigitsSplit(node_x=shards.node_x, node_y=shards.node_y, x_test=shards.x_test,
                       y_test=shards.y_test, n_features=shards.x_test.shape[1], n_classes=10)


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return split_digits()


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory, digits: DigitsSplit) -> Iterator[FlowerSetup]:
    """SuperLink (TLS, SuperNode auth) + 3 SuperNodes on digits shards, for the module."""
    work = tmp_path_factory.mktemp("flower")
    fed = Federation(
        work,
        supernode_auth=True,
        restart=RestartPolicy(max_restarts=40, initial_backoff_s=0.5, max_backoff_s=5.0),
    )
    rogue: SuperNode | None = None
    try:
        fed.start()
        for i in range(N_NODES):
            path = work / "data" / f"node{i}.npz"
            write_node_data(path, digits.node_x[i], digits.node_y[i])
            fed.add_node(f"node{i}", {"data-path": str(path), "device": f"dev-{i}"})
        rogue = SuperNode(
            "rogue",
            fed.superlink,
            {"data-path": str(work / "data" / "node0.npz")},
            work_dir=work,
            auth_key=make_node_key(work / "keys" / "rogue.key"),  # never registered
            restart=NO_RESTART,
        )
        rogue.start()
        node_ids = fed.wait_nodes(timeout_s=120)
        yield FlowerSetup(fed, node_ids, digits, rogue)
    finally:
        if rogue is not None:
            rogue.stop()
        fed.stop()
    leftovers = [n.name for n in fed.nodes.values() if n.process.running]
    assert not leftovers and not fed.superlink.process.running, f"still running: {leftovers}"

