"""Federated training on the device: a supervised Flower SuperNode fed by local feedback.

* :mod:`.config`: :class:`FederatedConfig` (the ``[federated]`` table of ``agent.toml``)
  and :class:`SupervisorPolicy` (backoff, check interval). Stdlib only.
* :mod:`.dataset`: exports the feedback store's labelled examples of one model to the
  ``.npz`` the ClientApp reads (``x``, ``y``), atomically, newest first, bounded.
* :mod:`.eligibility`: pure decisions: may the node run now, how long to back off.
* :mod:`.nodekey`: the SuperNode's authentication key (EC P-384, OpenSSH), made once.
* :mod:`.join`: registers that key with the fleet server (signed ``POST
  /device/fl-node``) and learns the SuperLink address and CA certificate.
* :mod:`.supervisor`: :class:`~.supervisor.SuperNodeSupervisor` runs ``flower-supernode``
  while the device is eligible, restarts it with backoff, stops it cleanly.

Rules: raw data never leaves the device (the dataset file is written only for the local
child process; Flower sends weights and metrics); the supervisor imports flwr, so the
daemon imports it only when ``[federated] enabled = true``. See docs/agent-federated.md.
"""

from __future__ import annotations

from edgefleet.agent.federated.config import FederatedConfig, SupervisorPolicy
from edgefleet.agent.federated.errors import (
    DatasetError,
    FederatedError,
    JoinError,
    NodeKeyError,
)

__all__ = [
    "DatasetError",
    "FederatedConfig",
    "FederatedError",
    "JoinError",
    "NodeKeyError",
    "SupervisorPolicy",
]
