"""What the devices of a rollout reported, turned into :class:`Observations`.

Reads only (never writes): ``device_update_status`` / ``device_update_events`` (updates),
``ingest_presence``, ``ingest_model_stats`` and ``drift_windows`` (ingest). Every query is
set-based: the device lists go to SQLite as one JSON array (``json_each``), so a tick
costs a handful of queries whatever the number of devices.

Decisions:

* **Install state** (:func:`device_states`): folded from the device's update events for
  the new bundle received since the wave was assigned (server clock), in order; without
  such events, ``device_update_status`` (COMMITTED with the new bundle -> INSTALLED).
* **Lost**: a wave device is lost when its last heartbeat (server clock) is older than
  ``lost_after_s``, counting from the wave's start at the earliest: every device gets the
  same grace after being assigned, and a device never seen at all becomes lost once
  ``lost_after_s`` passed since the wave started.
* **Latency / accuracy / shadow** come from ``ingest_model_stats`` (one row per device,
  model and version served). "Old" rows are the control devices' (their newest row of
  ``old_version``, or of any other version when it is None); when there are none, the
  assigned devices' own old-version rows.
* **Drift** compares bin counts of windows binned on one reference profile: the one most
  of the new version's windows use (devices bin every version on the profile of the
  release they were set up with; found by digest among the model's registry versions),
  else the new version's own (windows binned on another reference cannot be compared bin
  by bin and are left out): new = new-version windows of the assigned devices ending at or after
  the wave start; control = old-version windows of the control devices and of the
  assigned devices ending at or after ``started - 6 h``. Counts are exact sums; PSI and
  JS of the output column(s) (the largest if several), the largest input-feature PSI and
  its name; ``predictions_*`` are the ``n`` sums of the windows compared. The profile
  comes from ``reference`` (default: read from the registry's table); without the new
  version's profile the drift fields stay None.

Install states fold over the events of ``device_update_events`` whose ``received_at`` is
at or after the wave start; the search for the first such event assumes ids grow with
the server clock (true for ``UpdateEvents.record``), with a margin of
``_EVENT_ID_MARGIN`` events.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlite_utils import Database

from edgefleet.agent.drift import DriftError, ReferenceProfile, js_divergence, psi
from edgefleet.fleet_server.ingest.bodies import ReferenceLookup
from edgefleet.fleet_server.ingest.service import model_reference_profiles
from edgefleet.fleet_server.rollouts.model import DeviceState, Observations
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

#: How far before the rollout's start the assigned devices' old-version windows count.
CONTROL_LOOKBACK_S = 6 * 3600.0

# agent/update/state.py UpdateState values (the wire form of update events).
_IN_PROGRESS = frozenset({"downloading", "verifying", "staging", "warming", "switching"})
_RESTING = frozenset({"idle", "checking", "committed"})
_EVENT_ID_MARGIN = 10_000


@dataclass(frozen=True)
class RolloutScope:
    """Which devices and versions one observation covers.

    Attributes:
        model: the model name.
        new_version: the version being rolled out.
        new_target: the TUF target name of its bundle (e.g. ``"digits-1.1.0.tar"``).
        old_version: the version replaced; None for "whatever they ran" (control is any
            other version).
        wave_devices: devices assigned in the current wave.
        assigned_devices: every device assigned so far (all waves, current included).
        control_devices: rollout devices not assigned yet (may be empty).
        since: unix s, when the current wave was assigned.
        started: unix s, when the rollout started.
        lost_after_s: how long without a heartbeat makes a wave device lost.
        shadow: shadow mode is on for this rollout.
    """

    model: str
    new_version: str
    new_target: str
    old_version: str | None
    wave_devices: tuple[str, ...]
    assigned_devices: tuple[str, ...]
    control_devices: tuple[str, ...]
    since: float
    started: float
    lost_after_s: float
    shadow: bool = False


def _iso(ts: float) -> str:
    """Unix seconds as the stored server-clock format (seconds precision, floored)."""
    return datetime.fromtimestamp(ts, UTC).replace(microsecond=0).isoformat()


def _ids(devices: Iterable[str] | Iterable[int]) -> str:
    return json.dumps(list(devices))


def _has(db: Database, *tables: str) -> bool:
    names = set(db.table_names())
    return all(t in names for t in tables)


# -- install states --------------------------------------------------------------------


def _fold(state: DeviceState, kind: str, frm: str | None, to: str | None) -> DeviceState:
    """The device's state after one update event naming the new bundle.

    The agent names the bundle of ``before.assignment or after.assignment`` and keeps the
    assignment after COMMITTED, so its periodic checks (committed/idle -> checking ->
    idle) carry the bundle it serves: they mean INSTALLED. A device rolling back reports
    ``-> rolling_back`` (FAILED until it finishes) then ``rolling_back -> idle``
    (ROLLED_BACK); a later retry (a failed download is retried) moves it on again.
    """
    if kind == "error":  # a failed rollback, or the installed model became unusable
        return DeviceState.FAILED
    if to == "committed":
        return DeviceState.INSTALLED
    if to == "rolling_back":
        return DeviceState.FAILED
    if frm == "rolling_back" and to == "idle":
        return DeviceState.ROLLED_BACK
    if frm in _RESTING and to in _RESTING:
        # Only a device serving the bundle checks with it as its assignment.
        return state if state is DeviceState.FAILED else DeviceState.INSTALLED
    if to in _IN_PROGRESS:
        # Already installed: the one "checking -> downloading" naming the old assignment
        # is the device moving on to another bundle; it still serves this one.
        return state if state is DeviceState.INSTALLED else DeviceState.DOWNLOADING
    return state


# The last event of each kind the fold tells apart, per device, in one aggregate: folding
# those few in id order gives the fold of the whole sequence for the sequences a device
# produces (each rule depends only on the event's kind and the state before it).
_KINDS: tuple[tuple[str, tuple[str, str | None, str | None]], ...] = (
    ("kind = 'error'", ("error", None, None)),
    ("kind = 'state' AND to_state = 'committed'", ("state", None, "committed")),
    ("kind = 'state' AND to_state = 'rolling_back'", ("state", None, "rolling_back")),
    ("kind = 'state' AND from_state = 'rolling_back' AND to_state = 'idle'",
     ("state", "rolling_back", "idle")),
    ("kind = 'state' AND from_state IN ('idle', 'checking', 'committed')"
     " AND to_state IN ('idle', 'checking', 'committed')", ("state", "idle", "idle")),
    ("kind = 'state' AND to_state IN ('downloading', 'verifying', 'staging', 'warming',"
     " 'switching')", ("state", None, "downloading")),
)
_LAST_EVENTS = (
    "SELECT device_id, "  # noqa: S608 (constant fragments)
    + ", ".join(f"max(CASE WHEN {c} THEN id END)" for c, _ in _KINDS)
    + " FROM device_update_events WHERE device_id IN (SELECT value FROM json_each(?))"
    " AND id >= ? AND bundle = ? AND received_at >= ? GROUP BY device_id"
)


def _first_event_id(db: Database, after: str) -> int:
    """A lower bound of the ids of the events received at or after ``after`` (ISO).

    ``UpdateEvents.record`` stamps ``received_at`` from the server clock as it inserts,
    so ids grow with it: a binary search over ids (a dozen point reads) finds the first
    one, and each device's index range ``(device_id, id)`` starts there instead of at
    its oldest kept event (devices keep up to 10,000). The bound is moved back by
    ``_EVENT_ID_MARGIN`` against small server clock steps; ``received_at`` is still
    checked on every row.
    """
    # Two queries: min() and max() together would scan the table.
    first = db.execute("SELECT min(id) FROM device_update_events").fetchone()[0]
    if first is None:
        return 0
    last = db.execute("SELECT max(id) FROM device_update_events").fetchone()[0]
    lo, hi = int(first), int(last) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = db.execute("SELECT id, received_at FROM device_update_events WHERE id >= ?"
                         " ORDER BY id LIMIT 1", [mid]).fetchone()
        if row is None or row[1] >= after:
            hi = mid
        else:
            lo = int(row[0]) + 1
    return max(0, lo - _EVENT_ID_MARGIN)


def device_states(store: Store, devices: Sequence[str], new_target: str,
                  since: float) -> dict[str, DeviceState]:
    """Each device's part in installing ``new_target`` (assigned at ``since``, unix s).

    The update events naming ``new_target`` received since ``since`` decide; a device
    without any keeps what ``device_update_status`` says (COMMITTED with ``new_target``
    is INSTALLED), else it is PENDING.
    """
    out = dict.fromkeys(devices, DeviceState.PENDING)
    db = store.db
    if not devices or not _has(db, "device_update_status", "device_update_events"):
        return out
    ids = _ids(out)
    for device, state, bundle in db.execute(
            "SELECT device_id, state, bundle FROM device_update_status"
            " WHERE device_id IN (SELECT value FROM json_each(?))", [ids]):
        if state == "committed" and bundle == new_target:
            out[device] = DeviceState.INSTALLED
    after = _iso(since)
    for device, *last in db.execute(
            _LAST_EVENTS, [ids, _first_event_id(db, after), new_target, after]):
        state = DeviceState.PENDING  # events since the wave replace the status
        for _id, (kind, frm, to) in sorted((i, ev) for i, (_c, ev) in zip(last, _KINDS,
                                                                           strict=True)
                                           if i is not None):
            state = _fold(state, kind, frm, to)
        out[device] = state
    return out


# -- presence --------------------------------------------------------------------------


def _lost(db: Database, devices: Sequence[str], since: float, lost_after_s: float,
          now: float) -> int:
    if not devices or now - since <= lost_after_s:
        return 0  # every device still has its grace period since the wave started
    cutoff = _iso(now - lost_after_s)
    alive = 0
    if _has(db, "ingest_presence"):
        alive = db.execute(
            "SELECT COUNT(*) FROM ingest_presence WHERE device_id IN"
            " (SELECT value FROM json_each(?)) AND heartbeat_at >= ?",
            [_ids(set(devices)), cutoff]).fetchone()[0]
    return len(set(devices)) - int(alive)


# -- per-version heartbeat statistics --------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """Latency and feedback of one side (new or old) from ``ingest_model_stats``."""

    rows: int
    p95_ms: float | None
    labeled: int
    accuracy: float | None


_VERSION_ROWS = (  # one row per device: the primary key
    "SELECT p95_ms, labeled, correct FROM ingest_model_stats"
    " WHERE model = ? AND device_id IN (SELECT value FROM json_each(?)) AND version = ?"
)
_OTHER_VERSION_ROWS = (
    # One row per device: its newest row of any version but the one given (SQLite takes
    # bare columns from the max(ts) row).
    "SELECT p95_ms, labeled, correct, max(ts) FROM ingest_model_stats"
    " WHERE model = ? AND device_id IN (SELECT value FROM json_each(?)) AND version != ?"
    " GROUP BY device_id"
)
_SHADOW = (
    # Rows shadowing the new version that are their device's newest (the version it
    # serves now is not the new one).
    "SELECT sum(s.shadow_compared), sum(s.shadow_agreed) FROM ingest_model_stats s"
    " WHERE s.model = ? AND s.device_id IN (SELECT value FROM json_each(?))"
    " AND s.version != ? AND s.shadow_version = ? AND s.shadow_compared > 0"
    " AND NOT EXISTS (SELECT 1 FROM ingest_model_stats n WHERE n.device_id = s.device_id"
    " AND n.model = s.model AND n.ts > s.ts)"
)


def _side(db: Database, model: str, devices: Iterable[str], version: tuple[str, bool]
          ) -> _Side:
    ids = _ids(set(devices))
    if ids == "[]" or not _has(db, "ingest_model_stats"):
        return _Side(0, None, 0, None)
    sql = _VERSION_ROWS if version[1] else _OTHER_VERSION_ROWS
    rows = db.execute(sql, [model, ids, version[0]]).fetchall()
    p95 = [r[0] for r in rows if r[0] is not None]
    labeled = sum(r[1] for r in rows if r[1])
    correct = sum(r[2] or 0 for r in rows if r[1])
    return _Side(len(rows), float(statistics.median(p95)) if p95 else None, labeled,
                 correct / labeled if labeled else None)


def _old_side(db: Database, scope: RolloutScope) -> _Side:
    """The control devices' old version; without any, the assigned devices' own."""
    control = _side(db, scope.model, scope.control_devices, _old_version(scope))
    if control.rows:
        return control
    return _side(db, scope.model, scope.assigned_devices, _old_version(scope))


def _shadow(db: Database, scope: RolloutScope) -> tuple[int, float | None]:
    """Pooled agreement of the devices (control and assigned) still serving another
    version than the new one (their newest row) with the new version as shadow."""
    ids = _ids({*scope.control_devices, *scope.assigned_devices})
    if ids == "[]" or not _has(db, "ingest_model_stats"):
        return 0, None
    compared, agreed = db.execute(_SHADOW, [scope.model, ids, scope.new_version,
                                            scope.new_version]).fetchone()
    if not compared:
        return 0, None
    return int(compared), int(agreed or 0) / int(compared)


def _old_version(scope: RolloutScope) -> tuple[str, bool]:
    """``old_version`` itself, or "anything but the new version" when it is None."""
    if scope.old_version is not None:
        return scope.old_version, True
    return scope.new_version, False


# -- drift -----------------------------------------------------------------------------
#
# The gates need only the bin counts, which merge as exact sums. Rebuilding every window
# as a WindowSummary (decoding its KLL sketches, merging moments) costs milliseconds per
# window: most of a minute for the 10,000 windows of a wide wave. The stored summaries were
# validated against their reference when ingested (``WindowSummary.from_dict``), so here
# each one is read as JSON and only its layout is checked against the reference.


@dataclass(frozen=True)
class _Drift:
    predictions_new: int = 0
    predictions_control: int = 0
    output_psi: float | None = None
    output_js: float | None = None
    input_psi_max: float | None = None
    input_psi_feature: str | None = None


#: At most this many windows per side, the newest: bounds a tick's work whatever the
#: fleet size and window length (10,000 windows of 500 predictions are plenty for PSI).
MAX_WINDOWS_PER_SIDE = 10_000
_WINDOWS = (
    "SELECT id, \"end\", n FROM drift_windows"
    " WHERE model = ? AND device_id IN (SELECT value FROM json_each(?))"
    " AND \"end\" >= ? AND version = ?"
    " ORDER BY \"end\" DESC LIMIT 10000"  # MAX_WINDOWS_PER_SIDE
)
_OTHER_VERSION_WINDOWS = _WINDOWS.replace("version = ?", "version != ?")
_SUMMARIES = ("SELECT id, summary FROM drift_windows"
              " WHERE id IN (SELECT value FROM json_each(?)) AND instr(summary, ?) > 0")

_Key = tuple[int, float, str]  # window id, end, reference digest


class WindowCountCache:
    """Bin counts of drift windows already read, so each window's JSON is parsed once
    per process (stored windows never change). Keyed by window id, end and reference
    digest; bounded, the least recently used go first (about 1 KB per window).

    Optional: ``observe`` works without it, parsing every window in range each time.
    The rollout service keeps one across ticks.
    """

    def __init__(self, max_windows: int = 100_000) -> None:
        self.max_windows = max_windows
        self._items: OrderedDict[_Key, np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, keys: Sequence[_Key]) -> dict[_Key, np.ndarray | None]:
        """The cached entries among ``keys`` (a None value: known not to be usable)."""
        with self._lock:
            found = {k: self._items[k] for k in keys if k in self._items}
            for k in found:
                self._items.move_to_end(k)
        return found

    def put_many(self, entries: Mapping[_Key, np.ndarray | None]) -> None:
        with self._lock:
            for key, counts in entries.items():
                self._items[key] = counts
                self._items.move_to_end(key)
            while len(self._items) > self.max_windows:
                self._items.popitem(last=False)


class _Counts:
    """Exact sums of the bin counts of windows binned on one reference profile."""

    def __init__(self, profile: ReferenceProfile, cache: WindowCountCache) -> None:
        self.profile = profile
        self.cache = cache
        self.names = [c.name for c in profile.columns]
        self.bins = [c.bins for c in profile.columns]
        self.offsets = np.cumsum([0, *self.bins])
        self.total = np.zeros(int(self.offsets[-1]), dtype=np.int64)
        self.predictions = 0

    def add(self, db: Database, sql: str, args: list[object]) -> None:
        digest = self.profile.digest
        rows = {(int(i), float(end), digest): int(n) for i, end, n in db.execute(sql, args)}
        found = self.cache.get_many(list(rows))
        missing = {key[0]: key for key in rows if key not in found}
        if missing:
            parsed: dict[_Key, np.ndarray | None] = dict.fromkeys(missing.values())
            # instr(): windows of other references are skipped without parsing them.
            for window_id, text in db.execute(_SUMMARIES, [_ids(missing), digest]):
                parsed[missing[int(window_id)]] = self._counts(text)
            self.cache.put_many(parsed)
            found.update(parsed)
        usable = [(counts, rows[key]) for key, counts in found.items() if counts is not None]
        if usable:
            self.total += np.sum([c for c, _n in usable], axis=0, dtype=np.int64)
            self.predictions += sum(n for _c, n in usable)

    def _counts(self, text: str) -> np.ndarray | None:
        try:
            data = json.loads(text)
            if data.get("ref") != self.profile.digest:
                return None
            columns = [*data["features"], *data["outputs"]]
            if [c["name"] for c in columns] != self.names or \
                    [len(c["c"]) for c in columns] != self.bins:
                log.warning("a drift window does not fit its reference: skipped")
                return None
            return np.fromiter((v for c in columns for v in c["c"]), dtype=np.int64,
                               count=self.total.size)
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("a drift window is not readable: skipped")
            return None

    def column(self, name: str) -> np.ndarray:
        j = self.names.index(name)
        return self.total[self.offsets[j]:self.offsets[j + 1]]


def registry_reference(store: Store) -> ReferenceLookup:
    """Reference profiles read from the registry's table in ``store`` (read only; None
    for an unknown version, one without a profile, or no registry in the database).
    The default of :func:`observe`; the server may pass its cached
    ``ingest.service.registry_references(services)`` instead."""

    def lookup(model: str, version: str) -> ReferenceProfile | None:
        db = store.db
        if not _has(db, "registry_versions"):
            return None
        row = db.execute("SELECT reference_profile FROM registry_versions"
                         " WHERE model = ? AND version = ?", [model, version]).fetchone()
        try:
            data = json.loads(row[0]) if row is not None and row[0] else None
            return ReferenceProfile.from_dict(data) if data else None
        except (ValueError, DriftError) as e:
            log.warning("registry %s %s: unusable reference profile: %s", model, version, e)
            return None

    return lookup


def _dominant_digest(db: Database, scope: RolloutScope) -> str | None:
    """The reference digest most of the new version's windows since the wave are binned on."""
    row = db.execute(
        "SELECT json_extract(summary, '$.ref') AS ref, SUM(n) FROM drift_windows"
        " WHERE model = ? AND device_id IN (SELECT value FROM json_each(?))"
        ' AND "end" >= ? AND version = ? GROUP BY ref ORDER BY 2 DESC LIMIT 1',
        [scope.model, _ids(set(scope.assigned_devices)), scope.since, scope.new_version]
    ).fetchone()
    return None if row is None or not isinstance(row[0], str) else row[0]


def _drift(db: Database, scope: RolloutScope, reference: ReferenceLookup,
           cache: WindowCountCache | None) -> _Drift:
    """New-version windows of the assigned devices since the wave started versus the
    old-version windows of the control and assigned devices since ``started - 6 h``,
    both binned on the new version's reference profile (windows binned on another
    reference cannot be compared bin by bin and are left out)."""
    if not _has(db, "drift_windows"):
        return _Drift()
    profile = reference(scope.model, scope.new_version)
    digest = _dominant_digest(db, scope)
    if digest is not None and (profile is None or digest != profile.digest):
        # the devices bin every version on the profile they were set up with
        profile = model_reference_profiles(db, scope.model).get(digest, profile)
    if profile is None:
        return _Drift()
    cache = cache if cache is not None else WindowCountCache()
    new, control = _Counts(profile, cache), _Counts(profile, cache)
    assigned = _ids(set(scope.assigned_devices))
    new.add(db, _WINDOWS, [scope.model, assigned, scope.since, scope.new_version])
    if not new.predictions:
        return _Drift()
    version, same = _old_version(scope)
    sql = _WINDOWS if same else _OTHER_VERSION_WINDOWS
    lookback = scope.started - CONTROL_LOOKBACK_S
    control.add(db, sql, [scope.model, _ids({*scope.control_devices,
                                             *scope.assigned_devices}),
                          lookback, version])
    if not control.predictions:
        return _Drift(predictions_new=new.predictions)
    outputs = [c.name for c in profile.outputs]
    out_psi = max(psi(control.column(c), new.column(c)) for c in outputs)
    out_js = max(js_divergence(control.column(c), new.column(c)) for c in outputs)
    feature_psi = {c.name: psi(control.column(c.name), new.column(c.name))
                   for c in profile.features}
    worst = max(feature_psi, key=lambda c: feature_psi[c]) if feature_psi else None
    return _Drift(new.predictions, control.predictions, float(out_psi), float(out_js),
                  None if worst is None else float(feature_psi[worst]), worst)


def output_counts(store: Store, model: str, version: str, devices: Sequence[str],
                  since: float) -> list[float]:
    """Merged bin counts of the output column(s) of ``version``'s windows from ``devices``
    ending at or after ``since``, on the binning most of them use (A/B comparisons).
    Empty when there are none or their reference profile is unknown."""
    db = store.db
    if not _has(db, "drift_windows"):
        return []
    scope = RolloutScope(model=model, new_version=version, new_target="", old_version=None,
                         wave_devices=(), assigned_devices=tuple(devices), control_devices=(),
                         since=since, started=since, lost_after_s=0.0)
    digest = _dominant_digest(db, scope)
    profile = None if digest is None else model_reference_profiles(db, model).get(digest)
    if profile is None:
        return []
    counts = _Counts(profile, WindowCountCache())
    counts.add(db, _WINDOWS, [model, _ids(set(devices)), since, version])
    return [float(v) for c in profile.outputs for v in counts.column(c.name)]


# -- the observation -------------------------------------------------------------------


def observe(store: Store, scope: RolloutScope, now: float, *,
            reference: ReferenceLookup | None = None,
            window_cache: WindowCountCache | None = None) -> Observations:
    """What the current wave and the control group reported, as of ``now`` (unix s).

    ``reference`` gives model versions' reference profiles (drift compares on the new
    version's bins); by default they are read from the registry's table
    (:func:`registry_reference`). Without the new version's profile the drift fields are
    None and the prediction counts 0. ``window_cache`` keeps windows' bin counts across
    calls (see :class:`WindowCountCache`).
    """
    db = store.db
    states = device_states(store, scope.wave_devices, scope.new_target, scope.since)
    count = {s: 0 for s in DeviceState}
    for state in states.values():
        count[state] += 1

    new = _side(db, scope.model, scope.assigned_devices, (scope.new_version, True))
    old = _old_side(db, scope)
    shadow_n, shadow_agreement = _shadow(db, scope) if scope.shadow else (0, None)
    drift = _drift(db, scope, reference if reference is not None else
                   registry_reference(store), window_cache)
    return Observations(
        wave_devices=len(states),
        installed=count[DeviceState.INSTALLED],
        failed=count[DeviceState.FAILED] + count[DeviceState.ROLLED_BACK],
        downloading=count[DeviceState.DOWNLOADING],
        lost=_lost(db, scope.wave_devices, scope.since, scope.lost_after_s, now),
        latency_p95_new_ms=new.p95_ms,
        latency_p95_old_ms=old.p95_ms,
        predictions_new=drift.predictions_new,
        predictions_control=drift.predictions_control,
        output_psi=drift.output_psi,
        output_js=drift.output_js,
        input_psi_max=drift.input_psi_max,
        input_psi_feature=drift.input_psi_feature,
        labels_new=new.labeled,
        labels_control=old.labeled,
        accuracy_new=new.accuracy,
        accuracy_control=old.accuracy,
        shadow_enabled=scope.shadow,
        shadow_samples=shadow_n,
        shadow_agreement=shadow_agreement,
    )


__all__ = ["CONTROL_LOOKBACK_S", "RolloutScope", "WindowCountCache", "device_states",
           "observe", "output_counts", "registry_reference"]
