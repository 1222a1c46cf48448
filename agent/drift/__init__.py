"""Drift statistics for edgefleet: pure functions and small value objects, no I/O.

This package does no I/O: no files, sockets, clocks or threads. It takes arrays and
dicts and returns numbers, summaries and verdicts; callers (the agent daemon, the fleet
server's ingestion) own the network, disk and time. Timestamps are passed in.

* :class:`ReferenceProfile` (built once from training data, shipped in the model bundle):
  per column fixed bin edges with counts, a KLL sketch and moments.
* :class:`SummaryBuilder` / :class:`WindowSummary`: per model version and window, counts
  over the reference's fixed edges (so merges are exact sums), a KLL sketch and moments.
* :func:`merge_summaries`: associative and commutative merge (device, group, fleet).
* :mod:`.stats`: PSI, Jensen–Shannon, KS and their sample-size-aware critical values.
* :class:`DriftDetector`: per-window verdicts with hysteresis, state in a small dataclass.

See docs/drift.md for the formats and the statistical choices.
"""

from edgefleet.agent.drift.compare import ColumnDrift, WindowReport, WindowStatus, compare
from edgefleet.agent.drift.detector import DetectorState, DriftDetector, DriftVerdict
from edgefleet.agent.drift.errors import DriftConfigError, DriftDataError, DriftError
from edgefleet.agent.drift.moments import Moments
from edgefleet.agent.drift.profile import ColumnProfile, ReferenceProfile
from edgefleet.agent.drift.stats import (
    js_divergence,
    ks_critical,
    ks_exact,
    ks_sketches,
    psi,
    psi_critical,
)
from edgefleet.agent.drift.summary import (
    ColumnSummary,
    SummaryBuilder,
    WindowSummary,
    merge_summaries,
)
from edgefleet.agent.drift.thresholds import DriftThresholds

__all__ = [
    "ColumnDrift",
    "ColumnProfile",
    "ColumnSummary",
    "DetectorState",
    "DriftConfigError",
    "DriftDataError",
    "DriftDetector",
    "DriftError",
    "DriftThresholds",
    "DriftVerdict",
    "Moments",
    "ReferenceProfile",
    "SummaryBuilder",
    "WindowReport",
    "WindowStatus",
    "WindowSummary",
    "compare",
    "js_divergence",
    "ks_critical",
    "ks_exact",
    "ks_sketches",
    "merge_summaries",
    "psi",
    "psi_critical",
]
