"""The detector: a ×1.15 scale shift is caught fast, stationary data never alarms, and
the hysteresis state machine behaves."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgefleet.agent.drift import (
    DetectorState,
    DriftConfigError,
    DriftDataError,
    DriftDetector,
    DriftThresholds,
    ReferenceProfile,
    SummaryBuilder,
    WindowStatus,
    compare,
    merge_summaries,
)
from edgefleet.agent.drift.detector import step

Gen = Callable[..., tuple[np.ndarray, np.ndarray]]
WINDOW = 1000


def run_windows(detector: DriftDetector, builder: SummaryBuilder, gen: Gen,
                rng: np.random.Generator, windows: int, scale: float = 1.0,
                batch: int = 64) -> list[bool]:
    alarms = []
    for w in range(windows):
        x, y = gen(rng, WINDOW, scale=scale)
        for i in range(0, WINDOW, batch):
            builder.add_batch(x[i:i + batch], y[i:i + batch])
        alarms.append(detector.update(builder.finish(60.0 * w, 60.0 * w + 60)).alarm)
    return alarms


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scale_shift_detected_within_2000_predictions(reference: ReferenceProfile, gen: Gen,
                                                      seed: int) -> None:
    rng = np.random.default_rng(seed)
    detector, builder = DriftDetector(reference), SummaryBuilder(reference, "1.0.0")
    assert not any(run_windows(detector, builder, gen, rng, 5))
    alarms = run_windows(detector, builder, gen, rng, 2, scale=1.15)
    assert any(alarms), "×1.15 scale shift not detected within 2,000 predictions"
    x, y = gen(rng, WINDOW, scale=1.15)
    builder.add_batch(x, y)
    verdict = detector.update(builder.finish(0, 60))
    assert "normal" in verdict.report.drifted


def test_stationary_data_never_alarms(reference: ReferenceProfile, gen: Gen) -> None:
    rng = np.random.default_rng(2024)
    detector, builder = DriftDetector(reference), SummaryBuilder(reference, "1.0.0")
    assert not any(run_windows(detector, builder, gen, rng, 250, batch=WINDOW))
    assert detector.state.windows == 250


def test_alarm_switches_off_after_recovery(reference: ReferenceProfile, gen: Gen) -> None:
    rng = np.random.default_rng(9)
    detector, builder = DriftDetector(reference), SummaryBuilder(reference, "1.0.0")
    assert run_windows(detector, builder, gen, rng, 3, scale=1.5)[-1]
    after = run_windows(detector, builder, gen, rng, 10)
    assert not after[-1]
    assert after.index(False) >= detector.thresholds.k_off - 1


def test_small_windows_are_not_tested(reference: ReferenceProfile, gen: Gen) -> None:
    builder = SummaryBuilder(reference, "1.0.0")
    builder.add_batch(*gen(np.random.default_rng(0), 50, scale=3.0))
    report = compare(reference, builder.finish(0, 1))
    assert report.status is WindowStatus.INSUFFICIENT
    assert not any(c.tested for c in report.columns)


def test_fleet_merge_detects_what_single_devices_cannot(reference: ReferenceProfile,
                                                        gen: Gen) -> None:
    rng = np.random.default_rng(4)
    windows = []
    for _ in range(40):
        builder = SummaryBuilder(reference, "1.0.0")
        builder.add_batch(*gen(rng, 150, scale=1.15))
        windows.append(builder.finish(0, 60))
    assert compare(reference, windows[0]).status is WindowStatus.INSUFFICIENT
    fleet = compare(reference, merge_summaries(windows))
    assert fleet.status is WindowStatus.OVER and "normal" in fleet.drifted


def test_step_hysteresis() -> None:
    t = DriftThresholds(k_on=2, k_off=3)
    s = DetectorState()
    over, clear, between = WindowStatus.OVER, WindowStatus.CLEAR, WindowStatus.BETWEEN
    s = step(s, over, t)
    assert not s.alarm and s.over_streak == 1
    s = step(step(s, between, t), over, t)
    assert not s.alarm  # the streak was broken
    s = step(s, over, t)
    assert s.alarm
    for _ in range(2):
        s = step(s, clear, t)
    s = step(s, WindowStatus.INSUFFICIENT, t)
    assert s.alarm and s.clear_streak == 2
    s = step(s, clear, t)
    assert not s.alarm and s.windows == 8


def test_state_round_trip_and_validation() -> None:
    s = DetectorState(alarm=True, over_streak=2, clear_streak=0, windows=9)
    assert DetectorState.from_dict(s.to_dict()) == s
    for bad in [None, {}, {**s.to_dict(), "alarm": 1}, {**s.to_dict(), "windows": -1}]:
        with pytest.raises(DriftDataError):
            DetectorState.from_dict(bad)


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 0.1, "alpha_clear": 0.05},
                                    {"min_n": 1}, {"k_on": 0}, {"psi_min": -1.0}])
def test_threshold_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(DriftConfigError):
        DriftThresholds(**kwargs)
