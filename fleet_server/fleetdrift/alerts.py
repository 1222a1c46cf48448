"""Drift alerts per scope: the pure decision (hysteresis) and the persisted records.

For each scope (model, version, scope kind, scope id) the server keeps one
:class:`DetectorState`. :func:`evaluate_scope` is pure: it feeds windows through
:class:`DriftDetector` (``k_on`` drifted windows open an alert, ``k_off`` consecutive clear
windows close it; windows between the thresholds keep it as it is) and returns the new
state and the transitions. :class:`AlertStore` does the SQL: states, the alert history
(opened / closed records) and the listing; callers wrap it in one transaction.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import Table

from edgefleet.agent.drift import (
    DetectorState,
    DriftDataError,
    DriftDetector,
    DriftThresholds,
    ReferenceProfile,
    WindowReport,
    WindowStatus,
    WindowSummary,
)
from edgefleet.fleet_server.fleetdrift.aggregate import Scope, ScopeKind, report_to_dict
from edgefleet.fleet_server.storage import Store

STATE_TABLE = "fleetdrift_state"
ALERTS_TABLE = "fleetdrift_alerts"


class AlertEvent(enum.StrEnum):
    """What happened to a scope's alert."""

    OPENED = "opened"
    CLOSED = "closed"


class AlertStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Transition:
    """The alarm of a scope switched on or off at the window whose report is given."""

    event: AlertEvent
    report: WindowReport
    window_end: float


@dataclass(frozen=True)
class ScopeOutcome:
    """Result of evaluating a scope's new windows."""

    state: DetectorState
    last_status: WindowStatus
    transitions: tuple[Transition, ...]


def evaluate_scope(reference: ReferenceProfile, thresholds: DriftThresholds,
                   state: DetectorState, windows: Sequence[WindowSummary]) -> ScopeOutcome:
    """Feed ``windows`` in order through the detector starting from ``state`` (pure).

    Raises:
        DriftDataError: no windows, or a window of another reference.
    """
    if not windows:
        raise DriftDataError("evaluate_scope: no windows")
    detector = DriftDetector(reference, thresholds, state)
    transitions: list[Transition] = []
    status = WindowStatus.INSUFFICIENT
    for window in windows:
        verdict = detector.update(window)
        status = verdict.report.status
        if verdict.changed:
            event = AlertEvent.OPENED if verdict.alarm else AlertEvent.CLOSED
            transitions.append(Transition(event, verdict.report, window.end_ts))
    return ScopeOutcome(detector.state, status, tuple(transitions))


def _alert_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "model": row["model"], "version": row["version"],
        "scope": row["scope_kind"], "scope_id": row["scope_id"], "status": row["status"],
        "opened_at": row["opened_at"], "closed_at": row["closed_at"],
        "drifted": json.loads(row["drifted"]),
        "open_report": json.loads(row["open_report"]),
        "close_report": None if row["close_report"] is None else json.loads(row["close_report"]),
    }


def audit_view(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert without its bulky reports (for audit entries)."""
    return {k: v for k, v in alert.items() if k not in {"open_report", "close_report"}}


def _scope_args(scope: Scope) -> list[str]:
    return [scope.model, scope.version, scope.kind.value, scope.id]


_SCOPE_WHERE = "model = ? AND version = ? AND scope_kind = ? AND scope_id = ?"


class AlertStore:
    """Scope states and the alert history in ``store`` (SQL only, no decisions)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def load_state(self, scope: Scope) -> DetectorState:
        """The scope's persisted state (a fresh one when none is stored).

        Raises:
            DriftDataError: the stored state is corrupt.
        """
        table = Table(self._store.db, STATE_TABLE)
        rows = list(table.rows_where(_SCOPE_WHERE, _scope_args(scope)))
        if not rows:
            return DetectorState()
        return DetectorState.from_dict(json.loads(rows[0]["state"]))

    def save_state(self, db: Database, scope: Scope, outcome: ScopeOutcome, now: str) -> None:
        # Plain SQL: sqlite-utils' upsert inserts the key alone first, which NOT NULL
        # columns silently refuse (INSERT OR IGNORE), so nothing would be stored.
        db.execute(
            "INSERT INTO fleetdrift_state (model, version, scope_kind, scope_id, state,"
            " last_status, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (model, version, scope_kind, scope_id) DO UPDATE SET"
            " state = excluded.state, last_status = excluded.last_status,"
            " updated_at = excluded.updated_at",
            [*_scope_args(scope), json.dumps(outcome.state.to_dict()),
             outcome.last_status.value, now])

    def open_alert(self, db: Database, scope: Scope, report: dict[str, Any],
                   now: str) -> dict[str, Any] | None:
        """Insert an open alert for ``scope`` and return it (None: one is already open)."""
        table = Table(db, ALERTS_TABLE)
        if table.count_where(f"{_SCOPE_WHERE} AND status = ?",
                             [*_scope_args(scope), AlertStatus.OPEN.value]):
            return None
        table.insert({
            "model": scope.model, "version": scope.version, "scope_kind": scope.kind.value,
            "scope_id": scope.id, "status": AlertStatus.OPEN.value, "opened_at": now,
            "closed_at": None, "drifted": json.dumps(report["drifted"]),
            "open_report": json.dumps(report), "close_report": None,
        })
        return self.get(int(table.last_rowid or 0), db)

    def close_alert(self, db: Database, scope: Scope, report: dict[str, Any],
                    now: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Close the scope's open alert; ``(before, after)`` or None when none is open."""
        rows = list(Table(db, ALERTS_TABLE).rows_where(
            f"{_SCOPE_WHERE} AND status = ?", [*_scope_args(scope), AlertStatus.OPEN.value]))
        if not rows:
            return None
        before = _alert_view(rows[0])
        Table(db, ALERTS_TABLE).update(rows[0]["id"], {
            "status": AlertStatus.CLOSED.value, "closed_at": now,
            "close_report": json.dumps(report)})
        return before, self.get(int(rows[0]["id"]), db)

    def get(self, alert_id: int, db: Database | None = None) -> dict[str, Any]:
        """One alert. Raises KeyError when there is none."""
        if not 0 < alert_id < 2**63:  # SQLite integers; larger ids cannot exist
            raise KeyError(alert_id)
        table = Table(db or self._store.db, ALERTS_TABLE)
        rows = list(table.rows_where("id = ?", [alert_id]))
        if not rows:
            raise KeyError(alert_id)
        return _alert_view(rows[0])

    def list(
        self, *, status: AlertStatus | None = None, model: str | None = None,
        version: str | None = None, kind: ScopeKind | None = None,
        scope_id: str | None = None, limit: int = 50, offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Alerts matching every given filter, newest first, and their total."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("status", status.value if status else None), ("model", model),
                              ("version", version), ("scope_kind", kind.value if kind else None),
                              ("scope_id", scope_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = " AND ".join(clauses) or None
        table = Table(self._store.db, ALERTS_TABLE)
        total = table.count_where(where, args) if where else table.count
        rows = table.rows_where(where, args, order_by="id DESC", limit=limit, offset=offset)
        return [_alert_view(r) for r in rows], total


def transition_report(transition: Transition, reference: ReferenceProfile) -> dict[str, Any]:
    """The JSON report of a transition's window, with the window's end time."""
    return {**report_to_dict(transition.report, reference), "window_end": transition.window_end}
