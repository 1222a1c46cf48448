"""Run settings for federated rounds: one frozen dataclass parsed from Flower's run config.

Flower passes a flat ``run_config`` (``dict[str, bool | int | float | str]``) to both the
ServerApp and the ClientApp. Its keys and default values are declared once here
(:data:`DEFAULT_RUN_CONFIG`); the generated app project copies them into
``[tool.flwr.app.config]`` because Flower only accepts overrides for declared keys.
This module does no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edgefleet.federated.flower.errors import SettingsError

ConfigValue = bool | int | float | str

#: Metric key every reply carries: the node's example count, the aggregation weight.
WEIGHT_KEY = "num-examples"


class StrategyName(enum.StrEnum):
    """Aggregation strategies a run can use (all from ``flwr.serverapp.strategy``)."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    FEDTRIMMEDAVG = "fedtrimmedavg"  # robust: coordinate-wise trimmed mean
    KRUM = "krum"  # robust: pick the update closest to its neighbours


#: Every run-config key with its default. Types matter: Flower keeps the TOML type.
DEFAULT_RUN_CONFIG: dict[str, ConfigValue] = {
    "num-rounds": 3,
    "strategy": StrategyName.FEDAVG.value,
    "min-nodes": 2,  # wait for this many connected nodes before each round
    "min-replies": 1,  # fewer successful train replies -> the round keeps the old weights
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "local-epochs": 1,
    "lr": 0.1,
    "batch-size": 32,
    "proximal-mu": 0.01,  # FedProx only
    "server-lr": 0.1,  # FedAdam's eta
    "trim-beta": 0.2,  # FedTrimmedAvg: fraction cut at each end
    "krum-byzantine": 0,  # Krum: assumed number of malicious nodes
    "dp-noise-multiplier": 0.0,  # > 0 together with dp-clipping-norm enables central DP
    "dp-clipping-norm": 0.0,
    "round-timeout-s": 120.0,  # per phase (train, evaluate); late nodes count as failed
    "straggler-cooldown-rounds": 1,  # a node that timed out sits out this many rounds
    "node-wait-s": 120.0,  # how long a round waits for min-nodes to be connected
    "evaluate-every": 1,  # federated evaluation after every k-th round (and the last); 0: never
    "checkpoint-dir": "",  # required: absolute path, written after every round
    "resume": False,  # continue from the latest checkpoint in checkpoint-dir
    "init-weights": "",  # optional .npz with initial weights (ignored when resuming)
    "start-round": 1,  # first round of a fresh run; > 1: init-weights are round N-1's
    "model-family": "logreg",
    "n-features": 0,  # required
    "n-classes": 0,  # required
    "hidden": 32,
    "seed": 0,
    "node-ids": "",  # comma-separated Flower node ids: only these take part ("": every node)
    "min-examples": 10,  # a node with fewer labelled examples refuses the round
    "holdout-fraction": 0.2,  # each node's held-out share for evaluation
}


@dataclass(frozen=True)
class RunSettings:
    """Validated run configuration (units in names; see :data:`DEFAULT_RUN_CONFIG`)."""

    num_rounds: int
    strategy: StrategyName
    min_nodes: int
    min_replies: int
    fraction_train: float
    fraction_evaluate: float
    local_epochs: int
    lr: float
    batch_size: int
    proximal_mu: float
    server_lr: float
    trim_beta: float
    krum_byzantine: int
    dp_noise_multiplier: float
    dp_clipping_norm: float
    round_timeout_s: float
    straggler_cooldown_rounds: int
    node_wait_s: float
    evaluate_every: int
    checkpoint_dir: str
    resume: bool
    init_weights: str
    start_round: int
    model_family: str
    n_features: int
    n_classes: int
    hidden: int
    seed: int
    node_ids: str
    min_examples: int
    holdout_fraction: float

    @property
    def cohort(self) -> frozenset[int] | None:
        """The Flower node ids allowed to take part (None: every connected node)."""
        if not self.node_ids.strip():
            return None
        return frozenset(int(x) for x in self.node_ids.split(",") if x.strip())

    @property
    def dp_enabled(self) -> bool:
        """Central differential privacy (server-side clipping + Gaussian noise) is on."""
        return self.dp_clipping_norm > 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (recorded in every checkpoint)."""
        out = asdict(self)
        out["strategy"] = self.strategy.value
        return out

    @classmethod
    def from_run_config(
        cls, run_config: Mapping[str, ConfigValue], *, require_checkpoint_dir: bool = True
    ) -> RunSettings:
        """Merge ``run_config`` over the defaults and validate.

        Raises:
            SettingsError: unknown key, wrong type or out-of-range value.
        """
        unknown = sorted(set(run_config) - set(DEFAULT_RUN_CONFIG))
        if unknown:
            raise SettingsError(f"unknown run-config keys: {', '.join(unknown)}")
        merged: dict[str, ConfigValue] = {**DEFAULT_RUN_CONFIG, **run_config}
        values: dict[str, Any] = {
            key.replace("-", "_"): _coerce(key, value) for key, value in merged.items()
        }
        try:
            values["strategy"] = StrategyName(str(values["strategy"]).lower())
        except ValueError:
            choices = ", ".join(s.value for s in StrategyName)
            raise SettingsError(
                f"unknown strategy {values['strategy']!r}; choose one of {choices}"
            ) from None
        settings = cls(**values)
        settings._validate(require_checkpoint_dir=require_checkpoint_dir)
        return settings

    def _validate(self, *, require_checkpoint_dir: bool) -> None:
        checks: list[tuple[bool, str]] = [
            (self.num_rounds >= 1, "num-rounds must be >= 1"),
            (self.min_nodes >= 1, "min-nodes must be >= 1"),
            (re.fullmatch(r"\s*(\d+\s*(,\s*\d+\s*)*)?", self.node_ids) is not None,
             "node-ids must be comma-separated node ids"),
            (self.min_replies >= 1, "min-replies must be >= 1"),
            (0.0 < self.fraction_train <= 1.0, "fraction-train must be in (0, 1]"),
            (0.0 <= self.fraction_evaluate <= 1.0, "fraction-evaluate must be in [0, 1]"),
            (self.local_epochs >= 1, "local-epochs must be >= 1"),
            (self.lr > 0.0, "lr must be > 0"),
            (self.batch_size >= 1, "batch-size must be >= 1"),
            (self.proximal_mu >= 0.0, "proximal-mu must be >= 0"),
            (self.server_lr > 0.0, "server-lr must be > 0"),
            (0.0 <= self.trim_beta < 0.5, "trim-beta must be in [0, 0.5)"),
            (self.krum_byzantine >= 0, "krum-byzantine must be >= 0"),
            (self.dp_noise_multiplier >= 0.0, "dp-noise-multiplier must be >= 0"),
            (self.dp_clipping_norm >= 0.0, "dp-clipping-norm must be >= 0"),
            (
                self.dp_noise_multiplier == 0.0 or self.dp_clipping_norm > 0.0,
                "dp-noise-multiplier needs dp-clipping-norm > 0",
            ),
            (self.round_timeout_s > 0.0, "round-timeout-s must be > 0"),
            (self.straggler_cooldown_rounds >= 0, "straggler-cooldown-rounds must be >= 0"),
            (self.node_wait_s > 0.0, "node-wait-s must be > 0"),
            (self.evaluate_every >= 0, "evaluate-every must be >= 0"),
            (1 <= self.start_round <= self.num_rounds,
             "start-round must be in [1, num-rounds]"),
            (self.start_round == 1 or bool(self.init_weights),
             "start-round > 1 needs init-weights (the weights after round start-round - 1)"),
            (self.start_round == 1 or not self.resume,
             "start-round and resume exclude each other"),
            (self.n_features >= 1, "n-features must be set (>= 1)"),
            (self.n_classes >= 2, "n-classes must be set (>= 2)"),
            (self.hidden >= 1, "hidden must be >= 1"),
            (self.min_examples >= 1, "min-examples must be >= 1"),
            (0.0 < self.holdout_fraction < 1.0, "holdout-fraction must be in (0, 1)"),
        ]
        if require_checkpoint_dir:
            checks.append(
                (
                    self.checkpoint_dir.startswith("/"),
                    "checkpoint-dir must be an absolute path",
                )
            )
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)

    def evaluates_after(self, server_round: int) -> bool:
        """Whether a federated evaluation phase follows ``server_round``."""
        if self.evaluate_every == 0 or self.fraction_evaluate == 0.0:
            return False
        return server_round % self.evaluate_every == 0 or server_round == self.num_rounds


def _coerce(key: str, value: ConfigValue) -> ConfigValue:
    """Coerce ``value`` to the type of the key's default (ints are accepted as floats)."""
    default = DEFAULT_RUN_CONFIG[key]
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{key} must be a bool, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SettingsError(f"{key} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise SettingsError(f"{key} must be a number, got {value!r}")
    if isinstance(value, str):
        return value
    raise SettingsError(f"{key} must be a string, got {value!r}")
