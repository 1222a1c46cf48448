"""FleetDriftService: drift reports per scope, the evaluation run, alerts and webhook.

The app's instance is ``services.extras["fleetdrift"]`` (:func:`fleetdrift_service`).
The evaluation run reads the device windows stored since the last run (a cursor over
``drift_windows.id``), evaluates every scope they touch and, in one transaction, saves
the scopes' detector states, opens / closes alerts (each audited with the system actor)
and moves the cursor. Only after the commit are the alert events handed to the webhook
sender, which delivers them on its own thread.

Per run, a device scope is fed each of its new windows in order; a group or the fleet
is fed one window: the merge of all its devices' new windows of that run.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlite_utils.db import Table

from edgefleet.agent.drift import (
    DetectorState,
    DriftDataError,
    ReferenceProfile,
    WindowStatus,
    WindowSummary,
    compare,
)
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.fleetdrift.aggregate import (
    Scope,
    ScopeKind,
    WindowRow,
    by_binning,
    merge,
    parse_window,
    partition,
    report_to_dict,
    windows_after,
    windows_in_range,
)
from edgefleet.fleet_server.fleetdrift.alerts import (
    AlertEvent,
    AlertStatus,
    AlertStore,
    ScopeOutcome,
    audit_view,
    evaluate_scope,
    transition_report,
)
from edgefleet.fleet_server.fleetdrift.errors import (
    InvalidQueryError,
    NoReferenceError,
    UnknownVersionError,
)
from edgefleet.fleet_server.fleetdrift.settings import FleetDriftSettings, settings_for
from edgefleet.fleet_server.fleetdrift.webhook import WebhookSender
from edgefleet.fleet_server.ingest.service import model_reference_profiles
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.errors import NotFoundError
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import utcnow

log = logging.getLogger(__name__)

EXTRA = "fleetdrift"
CURSOR_TABLE = "fleetdrift_cursor"
_CURSOR = "evaluation"
EVENT_NAMES = {AlertEvent.OPENED: "drift.alert.opened", AlertEvent.CLOSED: "drift.alert.closed"}


@dataclass(frozen=True)
class RunStats:
    """What one evaluation run did."""

    windows: int  # device windows read
    rejected: int  # windows whose summary failed validation
    skipped: int  # windows of a model version without a usable reference profile
    scopes: int  # scopes evaluated
    opened: int
    closed: int


class FleetDriftService:
    """Drift reports, evaluation runs and alerts of one server."""

    def __init__(self, services: Services, settings: FleetDriftSettings, *,
                 clock: Callable[[], str] = utcnow) -> None:
        self._services = services
        self._store = services.store
        self._audit = services.audit
        self._clock = clock
        self.settings = settings
        self.alerts = AlertStore(services.store)
        self.webhook = WebhookSender(
            settings.webhook_url, settings.webhook_secret,
            timeout_s=settings.webhook_timeout_s, attempts=settings.webhook_attempts,
            backoff_s=settings.webhook_backoff_s, queue_size=settings.webhook_queue_size)
        self._references: dict[tuple[str, str], ReferenceProfile] = {}
        self._by_digest: dict[tuple[str, str], ReferenceProfile] = {}
        self._run_lock = threading.Lock()

    # -- references ------------------------------------------------------------------

    def reference(self, model: str, version: str) -> ReferenceProfile:
        """The version's reference profile from the registry (cached: versions are
        immutable).

        Raises:
            NoReferenceError: unknown version, or no valid reference profile.
        """
        key = (model, version)
        cached = self._references.get(key)
        if cached is not None:
            return cached
        try:
            record = registry_service(self._services).get_version(model, version)
        except NotFoundError as e:
            raise UnknownVersionError(str(e)) from e
        data = record.get("reference_profile")
        if not data:
            raise NoReferenceError(f"model {model!r} version {version!r} has no reference"
                                   " profile")
        try:
            profile = ReferenceProfile.from_dict(data)
        except DriftDataError as e:
            raise NoReferenceError(f"model {model!r} version {version!r}: invalid reference"
                                   f" profile ({e})") from e
        self._references[key] = profile
        return profile

    def binning(self, model: str, version: str, digest: str | None) -> ReferenceProfile:
        """The profile a window of ``model``@``version`` was binned on: the version's own
        when ``digest`` is None or names it, else the profile of any version of ``model``
        with that digest (a device bins every version it serves on the profile it was set
        up with, so after an update the new version's windows name the old profile).

        Raises:
            UnknownVersionError: the registry does not know the version.
            NoReferenceError: no version of ``model`` has a profile with that digest.
        """
        try:
            own: ReferenceProfile | None = self.reference(model, version)
        except UnknownVersionError:
            raise
        except NoReferenceError:
            if digest is None:
                raise
            own = None
        if own is not None and (digest is None or digest == own.digest):
            return own
        assert digest is not None
        key = (model, digest)
        found = self._by_digest.get(key)
        if found is None:
            for d, profile in model_reference_profiles(self._store.db, model).items():
                self._by_digest[(model, d)] = profile
            found = self._by_digest.get(key)
        if found is None:
            raise NoReferenceError(f"model {model!r} version {version!r}: windows binned on "
                                   f"profile {digest[:12]}, which no version of the model has")
        return found

    # -- reports -----------------------------------------------------------------------

    def report(self, scope: Scope, since: float, until: float) -> dict[str, Any]:
        """The merged drift report of ``scope`` over windows ending in ``[since, until)``.

        Raises:
            NoReferenceError: no reference profile for the version.
            InvalidQueryError: an empty range or more windows than ``max_query_windows``.
        """
        if not since < until:
            raise InvalidQueryError("since must be before until")
        try:  # the version must be known; its own profile is needed only without windows
            no_profile: NoReferenceError | None = None
            self.reference(scope.model, scope.version)
        except UnknownVersionError:
            raise
        except NoReferenceError as e:
            no_profile = e
        limit = self.settings.max_query_windows
        rows = windows_in_range(self._store.db, scope.model, scope.version, scope.kind,
                                scope.id, since, until, limit + 1)
        if len(rows) > limit:
            raise InvalidQueryError(f"more than {limit} windows in range; narrow it")
        parsed = self._parse(rows)[0]
        # windows on other bins than the latest ones cannot be merged with them
        latest = parsed[-1][1].reference if parsed else None
        summaries = [s for _, s in parsed if s.reference == latest]
        open_alerts, _ = self.alerts.list(status=AlertStatus.OPEN, model=scope.model,
                                          version=scope.version, kind=scope.kind,
                                          scope_id=scope.id, limit=1)
        out: dict[str, Any] = {
            "model": scope.model, "version": scope.version, "scope": scope.kind.value,
            "id": scope.id, "since": since, "until": until, "windows": len(summaries),
            "rejected": len(rows) - len(parsed),
            "other_profile": len(parsed) - len(summaries),
            "devices": len({r.device_id for r in rows}),
            "open_alert": open_alerts[0]["id"] if open_alerts else None,
        }
        if not summaries:
            if no_profile is not None:
                raise no_profile
            return {**out, "predictions": 0, "status": WindowStatus.INSUFFICIENT.value,
                    "drifted": [], "columns": []}
        reference = self.binning(scope.model, scope.version, latest)
        merged = merge(summaries)
        report = compare(reference, merged, self.settings.thresholds)
        return {**out, "predictions": merged.predictions, "profile": reference.digest,
                **report_to_dict(report, reference)}

    # -- evaluation --------------------------------------------------------------------

    def evaluate(self) -> RunStats:
        """Evaluate the windows stored since the last run (one run at a time)."""
        with self._run_lock:
            return self._evaluate()

    def _cursor(self) -> int:
        rows = list(Table(self._store.db, CURSOR_TABLE).rows_where("name = ?", [_CURSOR]))
        return int(rows[0]["last_window_id"]) if rows else 0

    def _parse(self, rows: list[WindowRow]
               ) -> tuple[list[tuple[WindowRow, WindowSummary]], int, int]:
        parsed: list[tuple[WindowRow, WindowSummary]] = []
        rejected = skipped = 0
        missing: set[tuple[str, str]] = set()
        for row in rows:
            key = (row.model, row.version)
            if key in missing:
                skipped += 1
                continue
            try:
                summary = parse_window(row, functools.partial(self.binning, *key))
            except NoReferenceError as e:
                log.warning("drift windows of %s@%s not evaluated: %s", *key, e)
                missing.add(key)
                skipped += 1
                continue
            if summary is None:
                rejected += 1
            else:
                parsed.append((row, summary))
        return parsed, rejected, skipped

    def _outcomes(self, parsed: list[tuple[WindowRow, WindowSummary]]
                  ) -> list[tuple[Scope, ScopeOutcome, list[tuple[AlertEvent, dict[str, Any]]]]]:
        """Each scope's last outcome (its state is the scope's new detector state) and its
        alert transitions with their reports.

        A scope's windows go through its detector in order, in runs binned on the same
        profile; a group or the fleet sees one merged window per run.
        """
        out = []
        for scope, windows in partition(parsed).items():
            try:
                state = self.alerts.load_state(scope)
            except (DriftDataError, ValueError):
                log.exception("corrupt drift state of %s; starting afresh", scope.label())
                state = DetectorState()
            transitions: list[tuple[AlertEvent, dict[str, Any]]] = []
            outcome: ScopeOutcome | None = None
            try:
                for run in by_binning(windows):
                    reference = self.binning(scope.model, scope.version, run[0].reference)
                    batch = run if scope.kind is ScopeKind.DEVICE else [merge(run)]
                    outcome = evaluate_scope(reference, self.settings.thresholds, state, batch)
                    state = outcome.state
                    transitions += [(t.event, transition_report(t, reference))
                                    for t in outcome.transitions]
            except (DriftDataError, NoReferenceError):
                log.exception("drift evaluation of %s failed", scope.label())
                continue
            if outcome is not None:
                out.append((scope, outcome, transitions))
        return out

    def _evaluate(self) -> RunStats:
        after = self._cursor()
        rows = windows_after(self._store.db, after, self.settings.max_windows_per_run)
        if not rows:
            return RunStats(0, 0, 0, 0, 0, 0)
        parsed, rejected, skipped = self._parse(rows)
        outcomes = self._outcomes(parsed)
        events: list[tuple[str, dict[str, Any]]] = []
        now = self._clock()
        with self._store.transaction() as db:
            for scope, outcome, transitions in outcomes:
                self.alerts.save_state(db, scope, outcome, now)
                for event, report in transitions:
                    if event is AlertEvent.OPENED:
                        alert = self.alerts.open_alert(db, scope, report, now)
                        if alert is not None:
                            self._audit.record(SYSTEM, "drift.alert.open", "drift_alert",
                                               str(alert["id"]), None, audit_view(alert))
                            events.append((EVENT_NAMES[AlertEvent.OPENED], alert))
                    else:
                        closed = self.alerts.close_alert(db, scope, report, now)
                        if closed is not None:
                            before, alert = closed
                            self._audit.record(SYSTEM, "drift.alert.close", "drift_alert",
                                               str(alert["id"]), audit_view(before),
                                               audit_view(alert))
                            events.append((EVENT_NAMES[AlertEvent.CLOSED], alert))
            db.execute("INSERT INTO fleetdrift_cursor (name, last_window_id) VALUES (?, ?)"
                       " ON CONFLICT (name) DO UPDATE SET"
                       " last_window_id = excluded.last_window_id", [_CURSOR, rows[-1].id])
        for name, alert in events:
            log.info("%s: alert %d for %s/%s:%s", name, alert["id"],
                     f"{alert['model']}@{alert['version']}", alert["scope"], alert["scope_id"])
            self.webhook.send(name, {"alert": alert, "sent_at": self._clock()})
        opened = sum(1 for name, _ in events if name == EVENT_NAMES[AlertEvent.OPENED])
        return RunStats(len(rows), rejected, skipped, len(outcomes), opened,
                        len(events) - opened)

    def close(self) -> None:
        """Stop the webhook worker."""
        self.webhook.close()


def fleetdrift_service(services: Services) -> FleetDriftService:
    """The app's FleetDriftService, created once in ``services.extras["fleetdrift"]``."""
    existing = services.extras.get(EXTRA)
    if isinstance(existing, FleetDriftService):
        return existing
    svc = FleetDriftService(services, settings_for(services.config, services.extras))
    services.extras[EXTRA] = svc
    return svc


def install(services: Services, settings: FleetDriftSettings) -> FleetDriftService:
    """Replace the app's FleetDriftService by one with ``settings`` (closing the old one)."""
    existing = services.extras.get(EXTRA)
    if isinstance(existing, FleetDriftService):
        existing.close()
    svc = FleetDriftService(services, settings)
    services.extras[EXTRA] = svc
    return svc
