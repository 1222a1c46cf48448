"""Settings of device-side federated training (no I/O, stdlib only).

:class:`FederatedConfig` is the validated ``[federated]`` table of ``agent.toml``
(parsed by ``edgefleet.agent.daemon.config``); :class:`SupervisorPolicy` holds the
supervisor's timing, which is code, not configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Sub-directory of the daemon's state_dir holding the dataset, logs and Flower home.
FEDERATED_DIR = "federated"


@dataclass(frozen=True)
class FederatedConfig:
    """The ``[federated]`` table (see docs/agent-federated.md)."""

    enabled: bool = False
    superlink: str = ""  # host:port of the SuperLink's Fleet API (TLS)
    ca_cert: Path | None = None  # PEM CA certificate that signed the SuperLink's cert
    node_key: Path | None = None  # OpenSSH EC P-384 private key; made on first start
    model: str = ""  # whose labelled feedback trains
    min_examples: int = 10  # fewer labelled examples: the node does not run
    max_examples: int = 10_000  # newest labelled examples exported
    holdout_fraction: float = 0.2  # held-out share, passed to the node config
    max_load_per_cpu: float = 1.0  # 1-min load average / CPUs above this: busy; 0: never
    refresh_s: float = 300.0  # dataset re-export interval


@dataclass(frozen=True)
class SupervisorPolicy:
    """Timing of :class:`~edgefleet.agent.federated.supervisor.SuperNodeSupervisor`."""

    check_s: float = 2.0  # how often eligibility and the child are checked
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    jitter: float = 0.5  # each delay is scaled by a random factor in [1 - jitter, 1]
    stable_after_s: float = 60.0  # a child that ran this long resets the backoff
    stop_grace_s: float = 10.0  # SIGTERM to the process group, SIGKILL after this
    # flower-supernode --max-wait-time: a node that cannot reach the SuperLink this long
    # exits, and (joining the fleet server's federation) the next start joins again with
    # the server's current address and CA.
    reconnect_timeout_s: float = 300.0
    # A running node is stopped as busy only above max_load_per_cpu * this (hysteresis:
    # its own training raises the load, which must not stop it at once).
    running_load_factor: float = 1.5
