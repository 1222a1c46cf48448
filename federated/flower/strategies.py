"""Build the aggregation strategy of a run from its settings.

All strategies are Flower's own (``flwr.serverapp.strategy``): FedAvg, FedProx, FedAdam,
and the robust FedTrimmedAvg and Krum. Central differential privacy wraps any of them in
Flower's ``DifferentialPrivacyServerSideFixedClipping`` (each node's update is clipped to
``dp-clipping-norm`` on the server, then Gaussian noise with standard deviation
``noise_multiplier * clipping_norm / min_nodes`` is added to the aggregate).

Node sampling in the strategies is set to "every connected node, at least one"; the round
loop itself waits (with a timeout) for ``min-nodes`` connected nodes, because Flower's
sampling would otherwise wait forever.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from edgefleet.federated.flower.config import WEIGHT_KEY, RunSettings, StrategyName


def build_strategy(settings: RunSettings) -> tuple[Strategy, dict[str, Any] | None]:
    """The strategy for ``settings`` and, when central DP is on, its recorded parameters."""
    common: dict[str, Any] = {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
        "weighted_by_key": WEIGHT_KEY,
    }
    strategy: Strategy
    match settings.strategy:
        case StrategyName.FEDAVG:
            strategy = FedAvg(**common)
        case StrategyName.FEDPROX:
            strategy = FedProx(**common, proximal_mu=settings.proximal_mu)
        case StrategyName.FEDADAM:
            strategy = FedAdam(**common, eta=settings.server_lr, eta_l=settings.lr)
        case StrategyName.FEDTRIMMEDAVG:
            strategy = FedTrimmedAvg(**common, beta=settings.trim_beta)
        case StrategyName.KRUM:
            strategy = Krum(**common, num_malicious_nodes=settings.krum_byzantine)
    if not settings.dp_enabled:
        return strategy, None
    dp = {
        "mechanism": "central, server-side fixed clipping + Gaussian noise",
        "wrapper": "flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping",
        "clipping_norm": settings.dp_clipping_norm,
        "noise_multiplier": settings.dp_noise_multiplier,
        "num_sampled_nodes": settings.min_nodes,
        "noise_stddev": settings.dp_noise_multiplier
        * settings.dp_clipping_norm
        / settings.min_nodes,
    }
    wrapped = DifferentialPrivacyServerSideFixedClipping(
        strategy,
        noise_multiplier=settings.dp_noise_multiplier,
        clipping_norm=settings.dp_clipping_norm,
        num_sampled_clients=settings.min_nodes,
    )
    return wrapped, dp
