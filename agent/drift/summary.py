"""Window summaries: what a device reports per model version and window.

Hot path: the agent appends each prediction's input row and output row to a small
preallocated buffer (O(1) per prediction) and hands the buffer to
:meth:`SummaryBuilder.add_batch` every N predictions (64 is a good default) and once
more before :meth:`SummaryBuilder.finish`. ``add_batch`` costs one ``searchsorted`` and
one KLL update per column plus a few whole-matrix numpy operations, so the cost per
prediction falls as N grows (see benchmarks/drift.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.drift import kll
from edgefleet.agent.drift.bins import bin_index, validate_count
from edgefleet.agent.drift.column import ColumnStats, validate_name
from edgefleet.agent.drift.errors import DriftDataError
from edgefleet.agent.drift.moments import MomentArrays, Moments, batch_moments, merge_arrays
from edgefleet.agent.drift.profile import ColumnProfile, ReferenceProfile, as_matrix

VERSION = 1
WINDOW_KLL_PRECISION = 3
DEFAULT_MAX_KLL_CHARS = 4096
"""Largest encoded sketch accepted in a window summary (a real one at k=200 is about
1.7 KB of base64 even for a window of a million values)."""
MAX_WINDOW_N = 1 << 40
_PENDING_VALUES = 65536  # rows × columns kept before moments are folded in

ColumnSummary = ColumnStats
"""One column of a window summary (same shape as a reference column, minus edges)."""


@dataclass(frozen=True, eq=False)
class WindowSummary:
    """Drift statistics of one model version over one window (or a merge of windows).

    Attributes:
        model_version: the model version the predictions came from.
        reference: :attr:`ReferenceProfile.digest` of the profile whose edges were used.
        start_ts, end_ts: window bounds in seconds since the epoch (caller's clock).
        windows: how many device windows were merged into this one (1 on a device).
        features, outputs: per-column statistics in the reference's column order.
    """

    model_version: str
    reference: str
    start_ts: float
    end_ts: float
    windows: int
    features: tuple[ColumnStats, ...]
    outputs: tuple[ColumnStats, ...]

    @property
    def columns(self) -> tuple[ColumnStats, ...]:
        return self.features + self.outputs

    @property
    def predictions(self) -> int:
        """Rows summarized (each row is finite or not in every column)."""
        first = self.columns[0] if self.columns else None
        return first.n + first.nonfinite if first is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; KLL items rounded to 24 bits (see :mod:`.kll`)."""
        return {
            "v": VERSION,
            "model": self.model_version,
            "ref": self.reference,
            "start": self.start_ts,
            "end": self.end_ts,
            "windows": self.windows,
            "features": [c.to_dict(WINDOW_KLL_PRECISION) for c in self.features],
            "outputs": [c.to_dict(WINDOW_KLL_PRECISION) for c in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: object, reference: ReferenceProfile, *,
                  max_kll_chars: int = DEFAULT_MAX_KLL_CHARS) -> WindowSummary:
        """Validate an untrusted summary against ``reference`` and rebuild it.

        Raises:
            DriftDataError: wrong version or keys, a different reference, column names
                or bin counts that do not match the reference, negative or inconsistent
                counts, non-finite numbers, oversized sketches.
        """
        keys = {"v", "model", "ref", "start", "end", "windows", "features", "outputs"}
        if not isinstance(data, dict) or set(data) != keys:
            raise DriftDataError(f"window summary: expected keys {sorted(keys)}")
        if data["v"] != VERSION:
            raise DriftDataError(f"window summary: unsupported version {data['v']!r}")
        if data["ref"] != reference.digest:
            raise DriftDataError("window summary: computed against a different reference")
        model = validate_name(data["model"], "window summary model")
        start, end = (_timestamp(data[k], k) for k in ("start", "end"))
        if start > end:
            raise DriftDataError("window summary: start after end")
        windows = validate_count(data["windows"], "window summary windows", MAX_WINDOW_N)
        if windows < 1:
            raise DriftDataError("window summary: windows must be at least 1")
        features = _columns(data["features"], reference.features, "features", max_kll_chars)
        outputs = _columns(data["outputs"], reference.outputs, "outputs", max_kll_chars)
        rows = {c.n + c.nonfinite for c in features + outputs}
        if len(rows) > 1:
            raise DriftDataError("window summary: columns disagree on the number of rows")
        return cls(model, reference.digest, start, end, windows, features, outputs)


def _timestamp(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DriftDataError(f"window summary: {what} must be a number")
    out = float(value)
    if not math.isfinite(out) or out < 0:
        raise DriftDataError(f"window summary: {what} must be a finite, non-negative time")
    return out


def _columns(data: object, profile: tuple[ColumnProfile, ...], what: str,
             max_kll_chars: int) -> tuple[ColumnStats, ...]:
    if not isinstance(data, list) or len(data) != len(profile):
        raise DriftDataError(f"window summary: expected {len(profile)} {what}")
    out = []
    for i, (item, ref) in enumerate(zip(data, profile, strict=True)):
        column = ColumnStats.from_dict(item, bins=ref.bins, max_n=MAX_WINDOW_N,
                                       max_kll_chars=max_kll_chars,
                                       what=f"window summary {what}[{i}]")
        if column.name != ref.name:
            raise DriftDataError(f"window summary {what}[{i}]: name {column.name!r} "
                                 f"!= reference {ref.name!r}")
        out.append(column)
    return tuple(out)


class SummaryBuilder:
    """Accumulates predictions of one model version into a :class:`WindowSummary`.

    Not thread-safe: the agent owns one builder per model version on one thread.
    """

    def __init__(self, reference: ReferenceProfile, model_version: str = "unknown") -> None:
        self.reference = reference
        self.model_version = validate_name(model_version, "model_version")
        self._columns = reference.columns
        self._names = [c.name for c in self._columns]
        offsets = np.cumsum([0, *(c.bins for c in self._columns)])
        self._offsets = offsets[:-1]
        self._total_bins = int(offsets[-1])
        # Moments are merged per chunk of rows, not per batch: a merge costs ~100 µs of
        # small numpy operations whatever its size, so pending rows are kept (bounded
        # to about 512 KB) and folded in when the chunk is full or the window closes.
        self._flush_rows = max(256, _PENDING_VALUES // max(1, len(self._columns)))
        self._reset()

    def _reset(self) -> None:
        width = len(self._columns)
        self._counts = np.zeros(self._total_bins, dtype=np.int64)
        self._nonfinite = np.zeros(width, dtype=np.int64)
        self._moments = MomentArrays.empty(width)
        self._sketches = [kll.new_sketch() for _ in range(width)]
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._moments = merge_arrays(self._moments, batch_moments(rows, np.isfinite(rows)))
        self._pending, self._pending_rows = [], 0

    def add_batch(self, x: object, y: object) -> None:
        """Add ``b`` predictions: inputs ``x`` [b, features] and outputs ``y`` [b, k].

        Raises:
            DriftDataError: shapes do not match the reference or the row counts differ.
        """
        f, o = self.reference.features, self.reference.outputs
        xm = as_matrix(x, [c.name for c in f], "x")
        ym = as_matrix(y, [c.name for c in o], "y")
        if xm.shape[0] != ym.shape[0]:
            raise DriftDataError(f"x has {xm.shape[0]} rows, y has {ym.shape[0]}")
        if xm.shape[0] == 0:
            return
        m = np.concatenate((xm, ym), axis=1)  # a copy: callers may reuse their buffers
        valid = np.isfinite(m)
        all_valid = bool(valid.all())
        if not all_valid:
            self._nonfinite += m.shape[0] - valid.sum(axis=0)
        self._pending.append(m)
        self._pending_rows += m.shape[0]
        if self._pending_rows >= self._flush_rows:
            self._flush()
        index = np.empty(m.shape, dtype=np.int64)
        values32 = m.astype(np.float32).T
        for j, column in enumerate(self._columns):
            index[:, j] = bin_index(column.edges, m[:, j]) + self._offsets[j]
            values = values32[j] if all_valid else values32[j][valid[:, j]]
            if values.size:
                self._sketches[j].update(values)
        kept = index.ravel() if all_valid else index[valid]
        self._counts += np.bincount(kept, minlength=self._total_bins)

    def finish(self, start_ts: float, end_ts: float) -> WindowSummary:
        """Close the window: return its summary and start an empty one."""
        self._flush()
        width_f = len(self.reference.features)
        columns = []
        for j, name in enumerate(self._names):
            lo = int(self._offsets[j])
            counts = self._counts[lo:lo + self._columns[j].bins].copy()
            columns.append(ColumnStats(name, counts, int(self._nonfinite[j]),
                                       Moments.from_arrays(self._moments, j),
                                       self._sketches[j]))
        summary = WindowSummary(self.model_version, self.reference.digest, float(start_ts),
                                float(end_ts), 1, tuple(columns[:width_f]),
                                tuple(columns[width_f:]))
        self._reset()
        return summary


def merge_summaries(summaries: Sequence[WindowSummary]) -> WindowSummary:
    """Merge summaries of the same model version and reference (device, group, fleet).

    Counts, non-finite counts and ``windows`` are exact sums; moments use the exact
    parallel formulas; KLL sketches merge with their usual error bound. The result does
    not depend on the order or grouping of the inputs (up to float rounding in the
    moments and the sketches' randomized compaction).

    Raises:
        DriftDataError: empty input, or summaries of different model versions or
            references.
    """
    if not summaries:
        raise DriftDataError("merge_summaries: nothing to merge")
    first = summaries[0]
    for s in summaries[1:]:
        if s.model_version != first.model_version or s.reference != first.reference:
            raise DriftDataError("merge_summaries: different model versions or references")
        if len(s.features) != len(first.features) or len(s.outputs) != len(first.outputs):
            raise DriftDataError("merge_summaries: different column layouts")

    def merged(index: int, columns: list[ColumnStats]) -> ColumnStats:
        if len({(c.name, c.counts.size) for c in columns}) != 1:
            raise DriftDataError(f"merge_summaries: column {index} differs in name or bins")
        moments = Moments.to_arrays([c.moments for c in columns])
        total = MomentArrays(*(v[:1] for v in moments))
        for i in range(1, len(columns)):
            total = merge_arrays(total, MomentArrays(*(v[i:i + 1] for v in moments)))
        sketch = kll.new_sketch()
        for c in columns:
            sketch.merge(c.sketch)
        counts = np.sum([c.counts for c in columns], axis=0, dtype=np.int64)
        return ColumnStats(columns[0].name, counts, sum(c.nonfinite for c in columns),
                           Moments.from_arrays(total, 0), sketch)

    def group(attr: str) -> tuple[ColumnStats, ...]:
        width = len(getattr(first, attr))
        return tuple(merged(j, [getattr(s, attr)[j] for s in summaries]) for j in range(width))

    return WindowSummary(first.model_version, first.reference,
                         min(s.start_ts for s in summaries), max(s.end_ts for s in summaries),
                         sum(s.windows for s in summaries), group("features"), group("outputs"))
