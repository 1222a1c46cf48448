"""One measured figure, its goal, and how it is printed."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.settings import Settings


class Goal(enum.Enum):
    AT_MOST = "≤"
    AT_LEAST = "≥"


@dataclass(frozen=True)
class Figure:
    """A measured value compared with a goal.

    Attributes:
        key: stable identifier printed on the line (tests look for it).
        label: what was measured, for people.
        value: the measurement, in ``unit``.
        goal: the threshold, in ``unit``.
        detail: the raw numbers behind the value.
    """

    key: str
    label: str
    value: float
    unit: str
    goal: float
    direction: Goal
    detail: str = ""

    @property
    def passed(self) -> bool:
        if self.direction is Goal.AT_MOST:
            return self.value <= self.goal
        return self.value >= self.goal

    def line(self) -> str:
        verdict = "PASS" if self.passed else "MISS"
        value = f"{self.value:+.2f}" if self.unit in ("µs", "%", "points") else f"{self.value:.3f}"
        goal = f"{self.direction.value} {self.goal:g} {self.unit}".rstrip()
        text = f"[{verdict}] {self.key:<28} {self.label:<54} {value:>9} {self.unit:<6} goal {goal}"
        return f"{text}   ({self.detail})" if self.detail else text


def run_alone(module: str, doc: str | None, run: Callable[[Path, Settings], Iterable[Figure]],
              argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.<module> [--quick]``: one section alone, its figures printed
    as the whole run prints them."""
    import argparse
    import tempfile

    from benchmarks.settings import Settings

    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}",
                                     description=(doc or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="the smoke-test sizes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        for figure in run(Path(tmp), Settings.quick() if args.quick else Settings()):
            print(figure.line(), flush=True)
