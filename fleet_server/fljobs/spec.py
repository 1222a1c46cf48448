"""What an operator asks for when creating a federated job, parsed and checked (pure).

The API validates the JSON shape with :data:`CREATE_SCHEMA`; :func:`parse_spec` turns the
validated body into a frozen :class:`JobSpec` and checks what a schema cannot.
:func:`run_config` turns a spec into the Flower run config of one attempt.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgefleet.fleet_server.fljobs.errors import JobInvalid
from edgefleet.fleet_server.rollouts.spec import CREATE_SCHEMA as ROLLOUT_SCHEMA
from edgefleet.fleet_server.rollouts.spec import RolloutSpec, SpecError
from edgefleet.fleet_server.rollouts.spec import parse_spec as parse_rollout

_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_VERSION = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"}
_TAG = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$"}
MAX_ROUNDS = 1000
MIN_EVERY_S = 60.0
MAX_EVERY_S = 366 * 86_400.0


class Strategy(enum.StrEnum):
    """Aggregation strategies a job can ask for (``trimmed`` and ``krum`` are robust)."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    TRIMMED = "trimmed"
    KRUM = "krum"

    @property
    def flower_name(self) -> str:
        """The run-config value of ``edgefleet.federated.flower``."""
        return "fedtrimmedavg" if self is Strategy.TRIMMED else self.value


class JobStatus(enum.StrEnum):
    """Lifecycle of a job: queued -> running -> one of the final states."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # accepted and registered as a new version
    REJECTED = "rejected"  # trained, but not better than the base by the margin
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """No further change happens to the job."""
        return self in (JobStatus.SUCCEEDED, JobStatus.REJECTED, JobStatus.FAILED,
                        JobStatus.CANCELLED)


#: The rollout fields a job's ``canary`` may set: everything of a rollout's create request
#: (``POST /rollouts``) except what the job decides (model, version, from_version).
CANARY_FIELDS = tuple(k for k in ROLLOUT_SCHEMA["properties"]
                      if k not in ("model", "version", "from_version"))
CANARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["target"],
    "additionalProperties": False,
    "description": "when the result is accepted: publish its int8 version's release and "
                   "start this rollout of it (the fields of POST /rollouts without model, "
                   "version and from_version)",
    "properties": {k: ROLLOUT_SCHEMA["properties"][k] for k in CANARY_FIELDS},
}

CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "base_version", "cohort", "holdout"],
    "additionalProperties": False,
    "properties": {
        "model": _NAME,
        "base_version": _VERSION,
        "new_version": {**_VERSION, "description": "default '<base>-fl<job id>'"},
        "cohort": {
            "type": "object",
            "additionalProperties": False,
            "description": "group and tags combine (a device must match all); devices is "
                           "an explicit list. Only active devices with a registered Flower "
                           "node that is online take part.",
            "properties": {
                "group": _NAME,
                "tags": {"type": "array", "items": _TAG, "maxItems": 32},
                "devices": {"type": "array", "items": _NAME, "minItems": 1,
                            "maxItems": 10_000},
            },
        },
        "min_nodes": {"type": "integer", "minimum": 1, "maximum": 10_000},
        "rounds": {"type": "integer", "minimum": 1, "maximum": MAX_ROUNDS},
        "local_epochs": {"type": "integer", "minimum": 1, "maximum": 1000},
        "lr": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 100},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 100_000},
        "strategy": {"type": "string", "enum": [s.value for s in Strategy]},
        "dp": {
            "type": "object",
            "additionalProperties": False,
            "required": ["clipping_norm", "noise_multiplier"],
            "description": "central DP: server-side clipping + Gaussian noise",
            "properties": {
                "clipping_norm": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                                  "maximum": 1e6},
                "noise_multiplier": {"type": "number", "minimum": 0, "maximum": 1e3},
            },
        },
        "holdout": {"type": "string", "minLength": 2, "maxLength": 4096,
                    "description": "absolute path on the server of an .npz with x, y"},
        "margin": {"type": "number", "minimum": -1, "maximum": 1,
                   "description": "accept when candidate accuracy >= base + margin"},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 20},
        "round_timeout_s": {"type": "number", "minimum": 1, "maximum": 86_400},
        "node_wait_s": {"type": "number", "minimum": 1, "maximum": 86_400},
        "evaluate_every": {"type": "integer", "minimum": 0, "maximum": MAX_ROUNDS,
                           "description": "federated evaluation after every k-th round "
                                          "and the last; 0: never"},
        "max_quantization_drop": {"type": "number", "minimum": 0, "maximum": 100,
                                  "description": "int8 accuracy drop allowed (points)"},
        "every_s": {"type": "number", "minimum": MIN_EVERY_S, "maximum": MAX_EVERY_S,
                    "description": "re-run the same spec this long after the job ended"},
        "on_drift": {"type": "boolean",
                     "description": "re-run the same spec when a fleet-drift alert opens "
                                    "for the model after the job ended"},
        "canary": CANARY_SCHEMA,
    },
}


@dataclass(frozen=True)
class Cohort:
    """Which devices a job trains on (see ``CREATE_SCHEMA``)."""

    group: str | None = None
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class DpParams:
    """Central differential privacy of a job."""

    clipping_norm: float
    noise_multiplier: float


@dataclass(frozen=True)
class JobSpec:
    """Everything an operator chose for one federated job."""

    model: str
    base_version: str
    cohort: Cohort
    holdout: str
    new_version: str | None = None
    min_nodes: int = 2
    rounds: int = 3
    local_epochs: int = 1
    lr: float = 0.1
    batch_size: int = 32
    strategy: Strategy = Strategy.FEDAVG
    dp: DpParams | None = None
    margin: float = 0.0
    max_attempts: int = 3
    round_timeout_s: float = 120.0
    node_wait_s: float = 120.0
    evaluate_every: int = 1
    max_quantization_drop: float = 2.0
    every_s: float | None = None
    on_drift: bool = False
    #: the ``canary`` request as given (validated by :func:`canary_spec`)
    canary: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON stored in ``fl_jobs.spec`` (and accepted again by :func:`parse_spec`)."""
        out = asdict(self)
        out["strategy"] = self.strategy.value
        out["canary"] = None if self.canary is None else dict(self.canary)
        out["cohort"] = {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in out["cohort"].items() if v not in (None, (), [])}
        return {k: v for k, v in out.items() if v is not None}


def parse_spec(body: Mapping[str, Any]) -> JobSpec:
    """A :class:`JobSpec` from a body that passed ``CREATE_SCHEMA``.

    Raises:
        JobInvalid: inconsistent cohort, relative hold-out path.
    """
    raw_cohort = body.get("cohort") or {}
    cohort = Cohort(group=raw_cohort.get("group"), tags=tuple(raw_cohort.get("tags", ())),
                    devices=tuple(raw_cohort.get("devices", ())))
    if cohort.devices and (cohort.group or cohort.tags):
        raise JobInvalid("cohort: give either devices or group/tags, not both")
    if not (cohort.devices or cohort.group or cohort.tags):
        raise JobInvalid("cohort: name a group, tags or devices")
    if len(set(cohort.devices)) != len(cohort.devices):
        raise JobInvalid("cohort: devices are listed twice")
    holdout = str(body["holdout"])
    if not holdout.startswith("/"):
        raise JobInvalid("holdout must be an absolute path on the server")
    dp_raw = body.get("dp")
    dp = (DpParams(float(dp_raw["clipping_norm"]), float(dp_raw["noise_multiplier"]))
          if dp_raw else None)
    ints = ("new_version", "min_nodes", "rounds", "local_epochs", "batch_size",
            "max_attempts", "evaluate_every")
    reals = ("lr", "margin", "round_timeout_s", "node_wait_s", "max_quantization_drop",
             "every_s")
    options: dict[str, Any] = {k: body[k] for k in ints if k in body}
    options["on_drift"] = bool(body.get("on_drift", False))
    options |= {k: float(body[k]) for k in reals if k in body}
    canary = body.get("canary")
    spec = JobSpec(model=str(body["model"]), base_version=str(body["base_version"]),
                   cohort=cohort, holdout=holdout, dp=dp,
                   strategy=Strategy(body.get("strategy", Strategy.FEDAVG.value)),
                   canary=None if canary is None else dict(canary), **options)
    if spec.canary is not None:
        canary_spec(spec, "0")  # the version is only known at the end; the rest is checked
    if cohort.devices and spec.min_nodes > len(cohort.devices):
        raise JobInvalid(f"min_nodes {spec.min_nodes} exceeds the {len(cohort.devices)} "
                         "listed devices")
    return spec


def canary_spec(spec: JobSpec, version: str) -> RolloutSpec:
    """The rollout of ``version`` (the accepted result's int8 version) that the job's
    ``canary`` asks for.

    Raises:
        JobInvalid: the job has no canary, or it is inconsistent (waves, target, ...).
    """
    if spec.canary is None:
        raise JobInvalid("the job has no canary")
    body = {**spec.canary, "model": spec.model, "version": version}
    body.setdefault("name", f"canary {spec.model} {version}")
    try:
        return parse_rollout(body)
    except (SpecError, ValueError, TypeError) as e:
        raise JobInvalid(f"canary: {e}") from e


@dataclass(frozen=True)
class ModelShape:
    """What the Flower apps need to build the model of the base version."""

    family: str
    n_features: int
    n_classes: int
    hidden: int


def run_config(spec: JobSpec, shape: ModelShape, *, checkpoint_dir: str, init_weights: str,
               start_round: int = 1,
               node_ids: Sequence[int] = ()) -> dict[str, bool | int | float | str]:
    """The Flower run config of one attempt (keys of ``federated.flower.config``).

    ``start_round`` > 1 resumes: ``init_weights`` then hold the weights after round
    ``start_round - 1`` (the job's last registry checkpoint) and ``checkpoint_dir`` is the
    attempt's own, empty directory. ``node_ids``: the cohort's Flower nodes, the only
    ones asked to take part."""
    config: dict[str, bool | int | float | str] = {
        "num-rounds": spec.rounds,
        "strategy": spec.strategy.flower_name,
        "min-nodes": spec.min_nodes,
        "local-epochs": spec.local_epochs,
        "lr": spec.lr,
        "batch-size": spec.batch_size,
        "round-timeout-s": spec.round_timeout_s,
        "node-wait-s": spec.node_wait_s,
        "evaluate-every": spec.evaluate_every,
        "checkpoint-dir": checkpoint_dir,
        "init-weights": init_weights,
        "start-round": start_round,
        "model-family": shape.family,
        "n-features": shape.n_features,
        "n-classes": shape.n_classes,
        "hidden": shape.hidden,
        "node-ids": ",".join(str(n) for n in sorted(node_ids)),
    }
    if spec.dp is not None:
        config["dp-clipping-norm"] = spec.dp.clipping_norm
        config["dp-noise-multiplier"] = spec.dp.noise_multiplier
    return config
