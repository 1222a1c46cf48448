"""One column's statistics: bin counts, non-finite count, moments and a KLL sketch.

Shared by the reference profile and the window summaries; the wire form is a small
dict ``{"name", "c", "nan", "m", "kll"}`` (see docs/drift.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.drift import kll
from edgefleet.agent.drift.bins import validate_count, validate_counts
from edgefleet.agent.drift.errors import DriftDataError
from edgefleet.agent.drift.moments import Moments

MAX_NAME = 128


def validate_name(value: object, what: str) -> str:
    """A column or version name: a non-empty string of at most :data:`MAX_NAME` chars.

    Raises:
        DriftDataError: anything else.
    """
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise DriftDataError(f"{what} must be a non-empty string of at most {MAX_NAME} chars")
    return value


@dataclass(frozen=True, eq=False)
class ColumnStats:
    """Statistics of one column. ``counts`` is over the reference's fixed bins;
    ``nonfinite`` counts NaN and ±inf values, which are excluded from everything else.
    ``sketch`` is a ``datasketches.kll_floats_sketch``: treat it as read-only."""

    name: str
    counts: np.ndarray
    nonfinite: int
    moments: Moments
    sketch: kll.Sketch

    @property
    def n(self) -> int:
        """Finite values seen."""
        return self.moments.n

    def to_dict(self, precision: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "c": [int(c) for c in self.counts],
            "nan": self.nonfinite,
            "m": self.moments.to_list(),
            "kll": kll.encode(self.sketch, precision),
        }

    @classmethod
    def from_dict(cls, data: object, *, bins: int, max_n: int, max_kll_chars: int,
                  what: str, k: int = kll.K) -> ColumnStats:
        """Validate and rebuild one column.

        Raises:
            DriftDataError: malformed fields, counts that disagree with the moments or
                the sketch, or an oversized sketch.
        """
        if not isinstance(data, dict) or set(data) != {"name", "c", "nan", "m", "kll"}:
            raise DriftDataError(f"{what}: expected keys name, c, nan, m, kll")
        name = validate_name(data["name"], f"{what}.name")
        counts = validate_counts(data["c"], bins, f"{what}.c", max_n)
        nonfinite = validate_count(data["nan"], f"{what}.nan", max_n)
        moments = Moments.from_list(data["m"], max_n=max_n)
        if int(counts.sum()) != moments.n:
            raise DriftDataError(f"{what}: bin counts add up to {int(counts.sum())}, "
                                 f"moments say n = {moments.n}")
        sketch = kll.decode(data["kll"], k=k, max_chars=max_kll_chars)
        if sketch.n != moments.n:
            raise DriftDataError(f"{what}: sketch n {sketch.n} != moments n {moments.n}")
        with np.errstate(over="ignore"):
            bounds = np.array([moments.min, moments.max], dtype=np.float32)
        if moments.n and (bounds[0] != sketch.get_min_value()
                          or bounds[1] != sketch.get_max_value()):
            raise DriftDataError(f"{what}: sketch min/max disagree with the moments")
        return cls(name, counts, nonfinite, moments, sketch)
