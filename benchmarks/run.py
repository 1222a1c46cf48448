"""Run every benchmark and print each figure beside its goal.

``python -m benchmarks [--quick] [--threads N]`` (``python -m benchmarks.run`` works
too). Models are built in a temporary directory that is removed afterwards. The exit
code is 0 even when a goal is missed: a MISS is a measurement, not a crash.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime

from benchmarks import daemon, drift, federated, int8, overhead, rollouts, telemetry, updates
from benchmarks.figures import Figure
from benchmarks.settings import Settings


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="few iterations: a smoke run that prints every figure fast")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for every runtime (default 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    settings = Settings.quick(args.threads) if args.quick else Settings(threads=args.threads)
    print(f"edgefleet benchmarks ({'quick' if args.quick else 'full'} run): "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, threads {settings.threads}", flush=True)
    figures: list[Figure] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        workdir = Path(tmp)
        for title, section in (("(a) runner overhead over the raw runtime call", overhead),
                               ("(b) int8 versus float32", int8),
                               ("(c) drift summaries", drift),
                               ("(d) over-the-air updates", updates),
                               ("(e) agent daemon", daemon),
                               ("(f) telemetry and ingestion", telemetry),
                               ("(g) staged rollouts at fleet scale", rollouts),
                               ("(h) federated rounds: fleet-server job versus bare Flower",
                                federated)):
            print(f"\n{title}", flush=True)
            section_started = time.monotonic()
            for figure in section.run(workdir, settings):
                figures.append(figure)
                print(figure.line(), flush=True)
            print(f"    (section took {time.monotonic() - section_started:.1f} s)", flush=True)
    passed = sum(f.passed for f in figures)
    print(f"\n{passed}/{len(figures)} goals met in {time.monotonic() - started:.1f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
