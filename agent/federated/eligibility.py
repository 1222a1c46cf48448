"""Pure decisions of the supervisor: may the SuperNode run now, and how long to wait.

No I/O and no clock: the supervisor passes in what it measured.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.agent.federated.config import FederatedConfig, SupervisorPolicy


class State(StrEnum):
    """What the supervisor is doing (``/v1/health`` ``federated.state``)."""

    OFF = "off"  # configured off
    INELIGIBLE = "ineligible"  # too few examples, busy, or no dataset yet
    STARTING = "starting"  # eligible: joining the federation, launching the child
    RUNNING = "running"  # the SuperNode child is up
    BACKOFF = "backoff"  # the child died; waiting before the next start


@dataclass(frozen=True)
class Verdict:
    """Whether the node may run; ``reason`` says why not (empty when it may)."""

    state: State  # OFF, INELIGIBLE or RUNNING (the wish; BACKOFF is the supervisor's)
    reason: str

    @property
    def eligible(self) -> bool:
        return self.state is State.RUNNING


def decide(config: FederatedConfig, policy: SupervisorPolicy, *, examples: int | None,
           load_per_cpu: float, running: bool) -> Verdict:
    """Decide whether the SuperNode may run.

    Args:
        examples: labelled examples in the exported dataset (None: not exported yet).
        load_per_cpu: the 1-minute load average divided by the number of CPUs.
        running: the node runs now (a running node tolerates more load: hysteresis).
    """
    if not config.enabled:
        return Verdict(State.OFF, "federated training is configured off")
    if examples is None:
        return Verdict(State.INELIGIBLE, "no dataset exported yet")
    if examples < config.min_examples:
        return Verdict(State.INELIGIBLE,
                       f"too few labelled examples: {examples} < {config.min_examples}")
    limit = config.max_load_per_cpu
    if running:
        limit *= policy.running_load_factor
    if config.max_load_per_cpu > 0 and load_per_cpu > limit:
        return Verdict(State.INELIGIBLE,
                       f"busy: load per CPU {load_per_cpu:.2f} > {limit:.2f}")
    return Verdict(State.RUNNING, "")


def backoff_s(failures: int, policy: SupervisorPolicy, rng: random.Random) -> float:
    """Delay before restart number ``failures`` (1, 2, ...): exponential, capped, jittered.

    The jitter keeps a fleet of devices whose nodes died together (a SuperLink restart)
    from reconnecting in lockstep.
    """
    base = min(policy.initial_backoff_s * 2.0 ** max(failures - 1, 0), policy.max_backoff_s)
    return base * (1.0 - policy.jitter * rng.random())
