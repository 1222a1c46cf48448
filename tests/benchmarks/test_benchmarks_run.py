"""`python -m benchmarks --quick` runs and prints every figure beside its goal.

No timing assertions: whether a goal is met is the benchmark's output, not a test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIGURES = [
    "overhead.onnx.tiny",
    "overhead.onnx.heavy",
    "overhead.tflite.tiny",
    "overhead.tflite.heavy",
    *(f"int8.{variant}.{what}"
      for variant in ("onnx-dynamic", "onnx-static", "tflite-int8")
      for what in ("size", "latency-b1", "latency-b16", "accuracy")),
    "drift.bytes-per-feature",
    "drift.ks-merged-error",
    "drift.psi-merged-vs-central",
    "drift.detection-delay",
    "drift.false-alarms",
    "drift.hot-path",
    "updates.verify",
    "updates.resume-retransfer",
    "updates.swap-failures",
    "updates.swap-p99",
    "updates.crash-consistency",
    "daemon.hot-path",
    "telemetry.publish-rate",
    "telemetry.predictions-rate",
    "ingest.mosquitto",
    "ingest.embedded",
    "rollouts.tick-p50",
    "rollouts.tick-max",
    "rollouts.whole",
    "rollouts.server-rss",
    "rollouts.ingest-rate",
    "federated.round-ratio",
]


@pytest.mark.timeout(900)  # every section, real servers and brokers: minutes on 2 cores
def test_quick_run_prints_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=840, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for key in FIGURES:
        matching = [line for line in lines
                    if re.match(rf"\[(PASS|MISS)\] {re.escape(key)} .* goal [≤≥] ", line)]
        assert len(matching) == 1, f"no figure line for {key}:\n{proc.stdout}"
    figure_lines = [line for line in lines if re.match(r"\[(PASS|MISS)\] ", line)]
    assert len(figure_lines) == len(FIGURES)
    assert re.search(rf"\d+/{len(FIGURES)} goals met", proc.stdout)
