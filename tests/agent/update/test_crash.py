"""Crash consistency: SIGKILL the agent at random points during updates, restart, check.

See crash_harness.py for the schedule and the checks after every kill; the benchmark
(benchmarks/updates.py) runs the same harness for hundreds of iterations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.update.crash_harness import build_bundles, run_crash_schedule

ITERATIONS = 20


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_bundles(tmp_path_factory.mktemp("crash_bundles"))


def test_sigkill_at_random_points(tmp_path: Path, bundles: dict[str, Path]) -> None:
    stats = run_crash_schedule(tmp_path, bundles, ITERATIONS)
    assert stats["iterations"] == ITERATIONS
