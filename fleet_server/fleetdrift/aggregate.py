"""Reading device drift windows and merging them per device, group or the whole fleet.

Merging uses :func:`edgefleet.agent.drift.merge_summaries`: bin counts, non-finite counts
and window counts are exact sums, moments exact parallel merges, KLL sketches merged
with their usual error bound. A device belongs to the group it is in *now* (the
``devices`` table); windows of devices the server does not know count for the device and
fleet scopes only.

The windows are read from ``drift_windows`` (owned by ingestion; never written here).
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from edgefleet.agent.drift import (
    DriftDataError,
    ReferenceProfile,
    WindowReport,
    WindowSummary,
    merge_summaries,
)

log = logging.getLogger(__name__)

WINDOWS_TABLE = "drift_windows"
FLEET_ID = "fleet"  # the one id of the fleet scope


class ScopeKind(enum.StrEnum):
    """Where windows are merged."""

    DEVICE = "device"
    GROUP = "group"
    FLEET = "fleet"


@dataclass(frozen=True)
class Scope:
    """One alert scope: a model version seen on one device, one group or the fleet."""

    model: str
    version: str
    kind: ScopeKind
    id: str

    def label(self) -> str:
        """``model@version/kind:id``, for logs and audit targets."""
        return f"{self.model}@{self.version}/{self.kind.value}:{self.id}"


@dataclass(frozen=True)
class WindowRow:
    """One stored device window (``summary`` is the raw JSON text)."""

    id: int
    device_id: str
    group: str | None
    model: str
    version: str
    start: float
    end: float
    summary: str


_SELECT = (
    "SELECT w.id, w.device_id, d.group_name, w.model, w.version, w.start, w.\"end\","
    " w.summary FROM drift_windows w LEFT JOIN devices d ON d.id = w.device_id"
)


def _rows(db: Database, where: str, args: list[Any], limit: int) -> list[WindowRow]:
    if WINDOWS_TABLE not in db.table_names():
        return []
    sql = f"{_SELECT} WHERE {where} ORDER BY w.id LIMIT ?"
    return [WindowRow(int(r[0]), str(r[1]), r[2], str(r[3]), str(r[4]), float(r[5]),
                      float(r[6]), str(r[7]))
            for r in db.execute(sql, [*args, limit]).fetchall()]


def windows_after(db: Database, after_id: int, limit: int) -> list[WindowRow]:
    """Up to ``limit`` windows with an id above ``after_id``, in id order."""
    return _rows(db, "w.id > ?", [after_id], limit)


def windows_in_range(  # noqa: PLR0917 - a query with one argument per filter
    db: Database, model: str, version: str, kind: ScopeKind, scope_id: str,
    since: float, until: float, limit: int,
) -> list[WindowRow]:
    """Windows of one scope whose end lies in ``[since, until)``, in id order."""
    where = "w.model = ? AND w.version = ? AND w.\"end\" >= ? AND w.\"end\" < ?"
    args: list[Any] = [model, version, since, until]
    if kind is ScopeKind.DEVICE:
        where += " AND w.device_id = ?"
        args.append(scope_id)
    elif kind is ScopeKind.GROUP:
        where += " AND d.group_name = ?"
        args.append(scope_id)
    return _rows(db, where, args, limit)


def parse_window(row: WindowRow,
                 reference: Callable[[str | None], ReferenceProfile]) -> WindowSummary | None:
    """The row's summary validated against the profile it was binned on; None (logged)
    when it is bad.

    ``reference(digest)`` returns the profile whose :attr:`ReferenceProfile.digest` is the
    summary's ``ref`` (a device bins every version it serves on the profile it was set up
    with, so a new version's windows may name an earlier version's profile).

    Raises:
        NoReferenceError: from ``reference``: no profile with that digest.
    """
    try:
        data = json.loads(row.summary)
        ref = data.get("ref") if isinstance(data, dict) else None
        summary = WindowSummary.from_dict(data, reference(ref if isinstance(ref, str)
                                                          else None))
    except (ValueError, DriftDataError) as e:  # JSONDecodeError is a ValueError
        log.warning("drift window %d of device %s rejected: %s", row.id, row.device_id, e)
        return None
    return summary


def by_binning(summaries: Sequence[WindowSummary]) -> list[list[WindowSummary]]:
    """``summaries`` in runs of consecutive windows binned on the same profile (only
    windows on the same bins can be merged or compared against one reference)."""
    runs: list[list[WindowSummary]] = []
    for summary in summaries:
        if runs and runs[-1][-1].reference == summary.reference:
            runs[-1].append(summary)
        else:
            runs.append([summary])
    return runs


def scopes_of(row: WindowRow) -> list[Scope]:
    """Every scope a window counts for: its device, its device's group, the fleet."""
    scopes = [Scope(row.model, row.version, ScopeKind.DEVICE, row.device_id)]
    if row.group:
        scopes.append(Scope(row.model, row.version, ScopeKind.GROUP, row.group))
    scopes.append(Scope(row.model, row.version, ScopeKind.FLEET, FLEET_ID))
    return scopes


def partition(parsed: Iterable[tuple[WindowRow, WindowSummary]]
              ) -> dict[Scope, list[WindowSummary]]:
    """Windows by scope, each list in the input's order."""
    out: dict[Scope, list[WindowSummary]] = {}
    for row, summary in parsed:
        for scope in scopes_of(row):
            out.setdefault(scope, []).append(summary)
    return out


def merge(summaries: Sequence[WindowSummary]) -> WindowSummary:
    """One summary of all ``summaries`` (exact sums of bin counts).

    Raises:
        DriftDataError: empty input or summaries of different references.
    """
    return merge_summaries(list(summaries))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def column_status(over: bool, clear: bool, tested: bool) -> str:
    """``over`` / ``clear`` / ``between`` / ``untested`` for one column."""
    if not tested:
        return "untested"
    return "over" if over else "clear" if clear else "between"


def report_to_dict(report: WindowReport, reference: ReferenceProfile) -> dict[str, Any]:
    """JSON-safe report: the window status and per column PSI, JS, KS, z, status, n.

    Infinite statistics (a constant reference column that moved) become null.
    """
    outputs = {c.name for c in reference.outputs}
    columns = [
        {"name": c.name, "kind": "output" if c.name in outputs else "feature",
         "n": c.n, "status": column_status(c.over, c.clear, c.tested),
         "psi": _finite(c.psi), "js": _finite(c.js), "ks": _finite(c.ks),
         "z_mean": _finite(c.z_mean), "z_var": _finite(c.z_var),
         "psi_critical": _finite(c.psi_critical), "ks_critical": _finite(c.ks_critical),
         "z_critical": _finite(c.z_critical)}
        for c in report.columns
    ]
    return {"status": report.status.value, "drifted": list(report.drifted),
            "columns": columns}
