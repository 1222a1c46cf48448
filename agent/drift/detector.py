"""Per-model drift alarm with hysteresis.

The alarm switches on after ``k_on`` consecutive drifted windows and off after
``k_off`` consecutive clear windows (every statistic below the lower threshold set by
``alpha_clear``). Windows too small to test change nothing; windows between the two
thresholds break both streaks. The state is a small dataclass the server persists per
device / group / fleet and model version and hands back on restart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edgefleet.agent.drift.bins import validate_count
from edgefleet.agent.drift.compare import WindowReport, WindowStatus, compare
from edgefleet.agent.drift.errors import DriftDataError
from edgefleet.agent.drift.profile import ReferenceProfile
from edgefleet.agent.drift.summary import WindowSummary
from edgefleet.agent.drift.thresholds import DriftThresholds

_MAX = 1 << 62


@dataclass(frozen=True)
class DetectorState:
    """Persistable alarm state.

    Attributes:
        alarm: whether the drift alarm is on.
        over_streak: consecutive drifted windows so far.
        clear_streak: consecutive clear windows so far.
        windows: windows evaluated (including insufficient ones).
    """

    alarm: bool = False
    over_streak: int = 0
    clear_streak: int = 0
    windows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "over_streak": self.over_streak,
                "clear_streak": self.clear_streak, "windows": self.windows}

    @classmethod
    def from_dict(cls, data: object) -> DetectorState:
        """Raises: DriftDataError: wrong keys or types."""
        keys = {"alarm", "over_streak", "clear_streak", "windows"}
        if not isinstance(data, dict) or set(data) != keys:
            raise DriftDataError(f"detector state: expected keys {sorted(keys)}")
        if not isinstance(data["alarm"], bool):
            raise DriftDataError("detector state: alarm must be a boolean")
        return cls(data["alarm"],
                   *(validate_count(data[k], f"detector state {k}", _MAX)
                     for k in ("over_streak", "clear_streak", "windows")))


def step(state: DetectorState, status: WindowStatus, thresholds: DriftThresholds
         ) -> DetectorState:
    """The one function that changes alarm state (pure)."""
    s = replace(state, windows=state.windows + 1)
    if status is WindowStatus.INSUFFICIENT:
        return s
    if status is WindowStatus.BETWEEN:
        return replace(s, over_streak=0, clear_streak=0)
    if status is WindowStatus.OVER:
        over = s.over_streak + 1
        return replace(s, over_streak=over, clear_streak=0,
                       alarm=s.alarm or over >= thresholds.k_on)
    clear = s.clear_streak + 1
    return replace(s, over_streak=0, clear_streak=clear,
                   alarm=s.alarm and clear < thresholds.k_off)


@dataclass(frozen=True)
class DriftVerdict:
    """Outcome of one window: the new alarm state, whether it flipped, and why."""

    alarm: bool
    changed: bool
    report: WindowReport
    state: DetectorState


class DriftDetector:
    """Feeds window summaries through :func:`compare` and :func:`step`."""

    def __init__(self, reference: ReferenceProfile, thresholds: DriftThresholds | None = None,
                 state: DetectorState | None = None) -> None:
        self.reference = reference
        self.thresholds = thresholds or DriftThresholds()
        self.state = state or DetectorState()

    def update(self, summary: WindowSummary) -> DriftVerdict:
        """Evaluate one window and advance the state.

        Raises:
            DriftDataError: the summary does not belong to this reference.
        """
        report = compare(self.reference, summary, self.thresholds)
        before = self.state.alarm
        self.state = step(self.state, report.status, self.thresholds)
        return DriftVerdict(self.state.alarm, self.state.alarm != before, report, self.state)
