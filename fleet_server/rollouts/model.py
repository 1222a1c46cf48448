"""The rollout vocabulary shared by the policy, the observer, the service and the API.

Pure data: frozen dataclasses and enums, no I/O. ``policy`` turns a :class:`RolloutState`
and :class:`Observations` into a :class:`Decision`; ``observe`` computes
:class:`Observations` from what devices reported; ``service`` stores the state and carries
decisions out. Times are unix seconds (floats) throughout.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: Cumulative share of the rollout's devices that runs the new version after each wave.
DEFAULT_WAVES: tuple[float, ...] = (0.01, 0.10, 0.50, 1.00)
DEFAULT_BAKE_S = 600.0
DEFAULT_MAX_EXTENSION_S = 3600.0


class RolloutStatus(enum.StrEnum):
    """Where a rollout is. ``RUNNING`` and ``PAUSED`` are active: they hold their devices."""

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"  # every wave passed its gates
    ROLLED_BACK = "rolled_back"  # every touched device was assigned its previous bundle
    ABORTED = "aborted"  # stopped by an operator; devices keep what they were assigned

    @property
    def active(self) -> bool:
        return self in (RolloutStatus.RUNNING, RolloutStatus.PAUSED)


class FailurePolicy(enum.StrEnum):
    """What a failed gate (or data still missing after the longest extension) does."""

    PAUSE = "pause"
    ROLLBACK = "rollback"


class DeviceState(enum.StrEnum):
    """One device's part in a rollout, as the console shows it."""

    PENDING = "pending"  # not assigned yet, or assigned and nothing reported yet
    DOWNLOADING = "downloading"  # between CHECKING and WARMING for the new bundle
    INSTALLED = "installed"  # COMMITTED the new bundle
    FAILED = "failed"  # reported an error for the new bundle and has not recovered
    ROLLED_BACK = "rolled_back"  # the device rolled back, or the rollout assigned it back
    NOT_REVERTED = "not_reverted"  # a roll back found nothing to return it to, or the
    # device had moved on to another assignment: it keeps what it has


class GateStatus(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a gate verdict, not a secret
    FAIL = "fail"
    INSUFFICIENT = "insufficient"  # not enough data for a meaningful decision yet
    SKIPPED = "skipped"  # the gate does not apply (e.g. shadow mode off, no labels asked)


class Action(enum.StrEnum):
    """What the policy decides on one evaluation tick."""

    NONE = "none"  # not running (paused or finished): nothing to do
    WAIT = "wait"  # bake time not over yet
    EXTEND = "extend"  # bake time over but some gate lacks data: wait, up to the limit
    ADVANCE = "advance"  # every gate passed: assign the next wave
    COMPLETE = "complete"  # every gate of the last wave passed
    PAUSE = "pause"  # a gate failed (or data never came) and the policy is PAUSE
    ROLLBACK = "rollback"  # a gate failed (or data never came) and the policy is ROLLBACK


@dataclass(frozen=True)
class GateThresholds:
    """Gate limits. ``None`` turns a gate off (reported as SKIPPED).

    Attributes:
        max_install_failure_rate: failed or device-rolled-back / wave devices.
        max_lost_rate: wave devices without a heartbeat for ``lost_after_s`` / wave devices.
        lost_after_s: how long without a heartbeat makes a device lost.
        min_reported_rate: share of wave devices that must have installed (or failed)
            before any other gate is judged; below it the install gate is INSUFFICIENT.
        max_latency_p95_ratio: p95 latency of the new version / p95 of the old version.
        max_output_psi / max_output_js: output distribution, new version vs control.
        max_input_psi: largest per-feature PSI of the inputs, new version vs control.
        min_predictions: predictions needed on each side before drift gates are judged.
        max_accuracy_drop: control accuracy minus new accuracy, from feedback labels.
        min_labels: labels needed on each side before the accuracy gate is judged.
        min_shadow_agreement: share of shadow comparisons where both models agree.
        min_shadow_samples: comparisons needed before the shadow gate is judged.
    """

    max_install_failure_rate: float | None = 0.0
    max_lost_rate: float | None = 0.2
    lost_after_s: float = 300.0
    min_reported_rate: float = 1.0
    max_latency_p95_ratio: float | None = 1.5
    max_output_psi: float | None = 0.2
    max_output_js: float | None = 0.1
    max_input_psi: float | None = 0.25
    min_predictions: int = 200
    max_accuracy_drop: float | None = 0.02
    min_labels: int = 100
    min_shadow_agreement: float | None = 0.9
    min_shadow_samples: int = 100


@dataclass(frozen=True)
class Observations:
    """What the devices of the current wave (and the control group) reported.

    Counts are over the wave's devices unless named otherwise; a ``None`` value means no
    data at all. "New" is the rollout's target version on the devices assigned so far;
    "control" is the previous version (devices not yet assigned, or the assigned devices'
    windows before their switch).
    """

    wave_devices: int = 0
    installed: int = 0
    failed: int = 0  # FAILED or ROLLED_BACK by the device
    downloading: int = 0
    lost: int = 0
    latency_p95_new_ms: float | None = None
    latency_p95_old_ms: float | None = None
    predictions_new: int = 0
    predictions_control: int = 0
    output_psi: float | None = None
    output_js: float | None = None
    input_psi_max: float | None = None
    input_psi_feature: str | None = None
    labels_new: int = 0
    labels_control: int = 0
    accuracy_new: float | None = None
    accuracy_control: float | None = None
    shadow_enabled: bool = False
    shadow_samples: int = 0
    shadow_agreement: float | None = None


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: the measured value beside its threshold."""

    name: str
    status: GateStatus
    value: float | None
    threshold: float | None
    detail: str = ""


@dataclass(frozen=True)
class RolloutState:
    """What the policy needs to know about one rollout (the service stores it).

    ``waves`` are the cumulative device counts after each wave (strictly increasing, the
    last one is every device of the rollout); ``wave`` indexes the current wave (its
    devices are assigned); ``wave_started_at`` is when that assignment went out.
    ``promoted`` skips the rest of the current wave's bake time.
    """

    status: RolloutStatus
    waves: tuple[int, ...]
    wave: int
    wave_started_at: float
    bake_s: float = DEFAULT_BAKE_S
    max_extension_s: float = DEFAULT_MAX_EXTENSION_S
    on_failure: FailurePolicy = FailurePolicy.PAUSE
    promoted: bool = False
    thresholds: GateThresholds = field(default_factory=GateThresholds)


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one tick. ``next_wave`` is set only for ADVANCE."""

    action: Action
    reason: str
    gates: tuple[GateResult, ...] = ()
    next_wave: int | None = None
