"""(c) drift summaries: size, merge accuracy, detection delay, false alarms, hot path.

Simulated model: four input features of different shapes (normal, lognormal(0, 0.5),
uniform(-1, 1), gamma(2)) and one output, a logistic of a linear score, so a shift on a
feature also moves the output. The reference profile is built from 50,000 rows. A
device produces one window per minute; at the simulated rate of 1,000 predictions per
minute (≈ 17/s) a **device-day** is 1,440 windows of 1,000 predictions. Detector
settings are the library defaults (:class:`DriftThresholds`).

* bytes per feature per window: compact JSON of a window summary divided by its columns
  (features + output), the largest over windows of 1,000, 10,000 and 100,000 rows
  (the KLL sketch stops growing, so longer windows are no bigger). Goal ≤ 2,500 B.
* KS error: 100 devices send one window each (200–3,000 rows, the first feature scaled
  ×1.15); KS between the reference sketch and the merge of the 100 window sketches,
  against the exact KS on the raw rows; the largest error over columns. Goal ≤ 0.01.
* PSI merged vs central: PSI from the summed device bin counts minus PSI from binning
  all raw rows centrally; the largest absolute difference. Goal 0 (identical).
* detection delay: stationary windows, then the first feature is scaled ×1.15 from a
  random point inside a window; predictions from the shift until the alarm is on.
  Median over trials (p90 and the share within 2,000 in the detail). Goal ≤ 2,000.
* false alarms: alarm switch-ons per simulated device-day of stationary data. Goal ≤ 1%.
* hot path: ``SummaryBuilder.add_batch`` on batches of 64 predictions, total time over
  predictions (amortized: includes KLL compactions and the periodic moment merge); the
  agent appends to a ring buffer and calls it every 64 predictions. Goal: the issue's
  whole hot-path budget, 15 µs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.figures import Figure, Goal, run_alone
from benchmarks.settings import Settings
from edgefleet.agent.drift import (
    DriftDetector,
    ReferenceProfile,
    SummaryBuilder,
    WindowStatus,
    ks_exact,
    ks_sketches,
    merge_summaries,
    psi,
)
from edgefleet.agent.drift.bins import bin_index

FEATURES = ["normal", "lognormal", "uniform", "gamma"]
OUTPUTS = ["score"]
WINDOW = 1000
WINDOWS_PER_DAY = 24 * 60
BATCH = 64
SIZE_GOAL = 2500.0
KS_GOAL = 0.01
DELAY_GOAL = 2000.0
FALSE_ALARM_GOAL = 1.0  # percent of device-days with an alarm


def simulate(rng: np.random.Generator, n: int, scale: float = 1.0
             ) -> tuple[np.ndarray, np.ndarray]:
    x = np.column_stack([rng.normal(size=n) * scale, rng.lognormal(0, 0.5, size=n),
                         rng.uniform(-1, 1, size=n), rng.gamma(2.0, size=n)])
    y = 1.0 / (1.0 + np.exp(-(x @ np.array([0.8, -0.5, 0.3, 0.2]))))
    return x, y.reshape(-1, 1)


def _window(reference: ReferenceProfile, x: np.ndarray, y: np.ndarray) -> SummaryBuilder:
    builder = SummaryBuilder(reference, "1.0.0")
    builder.add_batch(x, y)
    return builder


def _size(reference: ReferenceProfile, rng: np.random.Generator) -> Figure:
    sizes = {}
    for n in (1_000, 10_000, 100_000):
        summary = _window(reference, *simulate(rng, n)).finish(0.0, 60.0)
        text = json.dumps(summary.to_dict(), separators=(",", ":"), allow_nan=False)
        sizes[n] = len(text) / len(summary.columns)
    return Figure(key="drift.bytes-per-feature", label="window summary JSON per column",
                  value=max(sizes.values()), unit="B", goal=SIZE_GOAL, direction=Goal.AT_MOST,
                  detail=", ".join(f"{n} rows {b:.0f} B" for n, b in sizes.items()))


def _merged(reference: ReferenceProfile, ref_rows: np.ndarray,
            rng: np.random.Generator) -> Iterator[Figure]:
    devices = [simulate(rng, int(rng.integers(200, 3001)), scale=1.15) for _ in range(100)]
    merged = merge_summaries([_window(reference, x, y).finish(0.0, 60.0) for x, y in devices])
    rows = np.concatenate([np.concatenate(d, axis=1) for d in devices])
    ks_err, psi_err, ks_detail = 0.0, 0.0, []
    for j, (ref, col) in enumerate(zip(reference.columns, merged.columns, strict=True)):
        exact = ks_exact(ref_rows[:, j], rows[:, j])
        approx = ks_sketches(ref.stats.sketch, col.sketch)
        ks_err = max(ks_err, abs(approx - exact))
        ks_detail.append(f"{ref.name} {approx:.4f}/{exact:.4f}")
        central = np.bincount(bin_index(ref.edges, rows[:, j]), minlength=ref.bins)
        psi_err = max(psi_err, abs(psi(ref.stats.counts, col.counts)
                                   - psi(ref.stats.counts, central)))
    yield Figure(key="drift.ks-merged-error", label="KS from 100 merged sketches vs exact",
                 value=ks_err, unit="", goal=KS_GOAL, direction=Goal.AT_MOST,
                 detail=f"{rows.shape[0]} rows; sketch/exact: " + ", ".join(ks_detail))
    yield Figure(key="drift.psi-merged-vs-central", label="PSI merged bins minus central PSI",
                 value=psi_err, unit="", goal=0.0, direction=Goal.AT_MOST,
                 detail="largest absolute difference over 5 columns, 100 devices")


def _delays(reference: ReferenceProfile, rng: np.random.Generator, trials: int) -> Figure:
    delays = []
    for _ in range(trials):
        detector, builder = DriftDetector(reference), SummaryBuilder(reference, "1.0.0")
        for _ in range(3):
            builder.add_batch(*simulate(rng, WINDOW))
            detector.update(builder.finish(0.0, 60.0))
        offset = int(rng.integers(0, WINDOW))
        if offset:
            builder.add_batch(*simulate(rng, offset))
        shifted, found, need = 0, float("inf"), WINDOW - offset
        for _ in range(8):
            builder.add_batch(*simulate(rng, need, scale=1.15))
            shifted += need
            need = WINDOW
            if detector.update(builder.finish(0.0, 60.0)).alarm:
                found = shifted
                break
        delays.append(found)
    arr = np.array(delays)
    within = int(np.sum(arr <= DELAY_GOAL))
    return Figure(key="drift.detection-delay",
                  label="×1.15 scale shift: median predictions to alarm",
                  value=float(np.median(arr)), unit="", goal=DELAY_GOAL, direction=Goal.AT_MOST,
                  detail=f"{trials} trials, p90 {np.percentile(arr, 90):.0f}, "
                         f"max {arr.max():.0f}, within 2000: {within}/{trials}")


def _false_alarms(reference: ReferenceProfile, rng: np.random.Generator,
                  days: float) -> Figure:
    windows = int(days * WINDOWS_PER_DAY)
    detector, builder = DriftDetector(reference), SummaryBuilder(reference, "1.0.0")
    switch_ons = over = not_clear = 0
    for w in range(windows):
        builder.add_batch(*simulate(rng, WINDOW))
        verdict = detector.update(builder.finish(60.0 * w, 60.0 * w + 60))
        switch_ons += verdict.changed and verdict.alarm
        over += verdict.report.status is WindowStatus.OVER
        not_clear += verdict.report.status is not WindowStatus.CLEAR
    return Figure(key="drift.false-alarms", label="false alarms per device-day (stationary)",
                  value=100.0 * switch_ons / days, unit="%", goal=FALSE_ALARM_GOAL,
                  direction=Goal.AT_MOST,
                  detail=f"{switch_ons} alarms in {days:g} device-days ({windows} windows of "
                         f"{WINDOW}); windows over threshold {over}; not clear "
                         f"{100.0 * not_clear / windows:.1f}% (alpha_clear 5%)")


def _hot_path(reference: ReferenceProfile, rng: np.random.Generator, iterations: int) -> Figure:
    builder = SummaryBuilder(reference, "1.0.0")
    x, y = simulate(rng, BATCH)
    for _ in range(20):
        builder.add_batch(x, y)
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter_ns()
        builder.add_batch(x, y)
        times[i] = time.perf_counter_ns() - start
    per = float(np.mean(times)) / BATCH / 1e3
    return Figure(key="drift.hot-path",
                  label=f"SummaryBuilder.add_batch per prediction (b={BATCH})",
                  value=per, unit="µs", goal=15.0, direction=Goal.AT_MOST,
                  detail=f"amortized mean; per batch of {BATCH}: p50 "
                         f"{np.median(times) / 1e3:.1f} µs, "
                         f"p99 {np.percentile(times, 99) / 1e3:.1f} µs; 5 columns; "
                         f"the goal is the whole hot-path budget")


def run(workdir: Path, settings: Settings) -> Iterator[Figure]:
    """Yield the drift figures (``workdir`` is unused: everything stays in memory)."""
    del workdir
    quick = settings.tiny_iterations <= Settings.quick().tiny_iterations
    rng = np.random.default_rng(2026)
    ref_x, ref_y = simulate(rng, 50_000)
    reference = ReferenceProfile.build(ref_x, FEATURES, ref_y, OUTPUTS)
    ref_rows = np.concatenate((ref_x, ref_y), axis=1)
    yield _size(reference, rng)
    yield from _merged(reference, ref_rows, rng)
    yield _delays(reference, rng, trials=10 if quick else 100)
    yield _false_alarms(reference, rng, days=0.25 if quick else 5.0)
    yield _hot_path(reference, rng, iterations=300 if quick else 5000)


if __name__ == "__main__":
    run_alone("drift", __doc__, run)
