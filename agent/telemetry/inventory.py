"""What the device says about itself: the ``birth`` inventory and process statistics.

Only stdlib probes (``platform``, ``os``, ``/proc`` where present): nothing here may
import a runtime just to ask its version (``importlib.metadata`` reads the installed
metadata instead).
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from edgefleet.agent import agent_version

# Runtimes the agent can use, by distribution name.
RUNTIME_DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}


def available_runtimes() -> dict[str, str]:
    """``{runtime: version}`` for every installed inference runtime."""
    found = {}
    for name, dist in RUNTIME_DISTRIBUTIONS.items():
        try:
            found[name] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def memory_total_bytes() -> int | None:
    """Physical memory of the machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def hardware() -> dict[str, Any]:
    """Platform, CPU count and memory of this machine."""
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_total_bytes(),
    }


def birth_body(
    models: Mapping[str, str] | None = None,
    runtimes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``birth`` body: agent version, runtimes, ``{model: version}``, hardware.

    ``runtimes`` defaults to :func:`available_runtimes`.
    """
    return {
        "agent_version": agent_version(),
        "runtimes": dict(available_runtimes() if runtimes is None else runtimes),
        "models": dict(models or {}),
        "hardware": hardware(),
    }


def rss_bytes() -> int:
    """Resident set size of this process (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class CpuMeter:
    """Process CPU use in percent of one core between successive :meth:`sample` calls."""

    _last_cpu_s: float = field(default_factory=_cpu_s)
    _last_wall_s: float = field(default_factory=time.monotonic)

    def sample(self) -> float:
        cpu, wall = _cpu_s(), time.monotonic()
        elapsed = wall - self._last_wall_s
        percent = 100.0 * (cpu - self._last_cpu_s) / elapsed if elapsed > 0 else 0.0
        self._last_cpu_s, self._last_wall_s = cpu, wall
        return round(percent, 2)


