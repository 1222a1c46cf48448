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
  of the new version's windows (the newest ``MAX_WINDOWS_PER_SIDE``) use (devices bin
  every version on the profile of the release they were set up with; found by digest
  among the model's registry versions), else the new version's own (windows binned on
  another reference cannot be compared bin by bin and are left out): new = new-version
  windows of the assigned devices ending at or after the wave start; control =
  old-version windows of the control devices and of the assigned devices ending at or
  after ``started - 6 h``. Counts are exact sums; PSI and JS of the output column(s) (the
  largest if several), the largest input-feature PSI and its name; ``predictions_*`` are
  the ``n`` sums of the windows compared. The profile comes from ``reference`` (default:
  read from the registry's table); without the new version's profile the drift fields
  stay None.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
    " AND id >= ? AND id <= ? AND bundle = ? AND received_at >= ? GROUP BY device_id"
)
_NEW_EVENTS = ("SELECT id, device_id, kind, from_state, to_state, bundle, received_at"
               " FROM device_update_events WHERE id > ? ORDER BY id")
_STATUS = ("SELECT device_id, state, bundle FROM device_update_status"
           " WHERE device_id IN (SELECT value FROM json_each(?))")


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


def _fold_last(last: Sequence[int | None]) -> DeviceState:
    """A device's state from the ids of its last event of each ``_KINDS`` kind."""
    state = DeviceState.PENDING  # events since the wave replace the status
    for _id, (kind, frm, to) in sorted((i, ev) for i, (_c, ev) in zip(last, _KINDS,
                                                                       strict=True)
                                       if i is not None):
        state = _fold(state, kind, frm, to)
    return state


@dataclass
class _Installs:
    """One (bundle, since, devices) fold: the state of each device with events since,
    the devices whose status says the bundle is committed, the last event id folded."""

    devices: frozenset[str]
    last_id: int
    folded: dict[str, DeviceState]
    committed: set[str]
    lock: threading.Lock = field(default_factory=threading.Lock)  # one follower at a time


class InstallStateCache:
    """Install states folded so far, per bundle, start time and device set: each later
    :func:`device_states` call reads only the events recorded since the previous one
    (event ids grow with every insert) and re-reads the status of just the devices that
    reported; the first call of a wave reads everything once. Optional; the rollout
    service keeps one (for the tick's wave and the view's assigned devices)."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[str, float], _Installs] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, float], devices: frozenset[str]) -> _Installs | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None or entry.devices != devices:
                return None
            self._items.move_to_end(key)
            return entry

    def put(self, key: tuple[str, float], entry: _Installs) -> None:
        with self._lock:
            self._items[key] = entry
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


def _committed(db: Database, devices: Iterable[str], new_target: str) -> set[str]:
    return {device for device, state, bundle in db.execute(_STATUS, [_ids(devices)])
            if state == "committed" and bundle == new_target}


def _read_installs(db: Database, devices: frozenset[str], new_target: str,
                   after: str) -> _Installs:
    """Everything once: the status of every device and the fold of their events."""
    top = db.execute("SELECT max(id) FROM device_update_events").fetchone()[0] or 0
    ids = _ids(devices)
    committed = _committed(db, devices, new_target)
    folded = {device: _fold_last(last) for device, *last in db.execute(
        _LAST_EVENTS, [ids, _first_event_id(db, after), top, new_target, after])}
    return _Installs(devices, int(top), folded, committed)


def _follow(db: Database, entry: _Installs, new_target: str, after: str) -> None:
    """Fold the events recorded since ``entry`` was last brought up to date."""
    reported: set[str] = set()
    for event_id, device, kind, frm, to, bundle, received in db.execute(
            _NEW_EVENTS, [entry.last_id]):
        entry.last_id = int(event_id)
        if device not in entry.devices:
            continue
        reported.add(device)
        if bundle == new_target and received >= after:
            entry.folded[device] = _fold(entry.folded.get(device, DeviceState.PENDING),
                                         kind, frm, to)
    if reported:  # the status changes only with the device's events
        entry.committed = (entry.committed - reported) | _committed(db, reported,
                                                                    new_target)


def device_states(store: Store, devices: Sequence[str], new_target: str,
                  since: float, *, cache: InstallStateCache | None = None
                  ) -> dict[str, DeviceState]:
    """Each device's part in installing ``new_target`` (assigned at ``since``, unix s).

    The update events naming ``new_target`` received since ``since`` decide; a device
    without any keeps what ``device_update_status`` says (COMMITTED with ``new_target``
    is INSTALLED), else it is PENDING. With ``cache``, only what was recorded since the
    previous call with the same arguments is read.
    """
    out = dict.fromkeys(devices, DeviceState.PENDING)
    db = store.db
    if not devices or not _has(db, "device_update_status", "device_update_events"):
        return out
    after = _iso(since)
    members = frozenset(out)
    key = (new_target, since)
    entry = None if cache is None else cache.get(key, members)
    if entry is None:
        entry = _read_installs(db, members, new_target, after)
        if cache is not None:
            cache.put(key, entry)
    with entry.lock:
        _follow(db, entry, new_target, after)
        for device in entry.committed:
            out[device] = DeviceState.INSTALLED
        out.update(entry.folded)
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
_SUMMARIES = "SELECT id, summary FROM drift_windows WHERE id IN (SELECT value FROM json_each(?))"


@dataclass(frozen=True)
class _Window:
    """What the gates need of one stored drift window, parsed once: the reference digest
    it is binned on, its column layout (names and bin counts, one shared tuple per
    layout) and all its columns' bin counts, concatenated."""

    end: float
    ref: str | None
    layout: tuple[tuple[str, ...], tuple[int, ...]] | None
    counts: np.ndarray | None


_UNREADABLE = _Window(0.0, None, None, None)


class WindowCountCache:
    """Drift windows already read, parsed once per process (stored windows never change),
    keyed by window id (and checked against its end); bounded, the first read go first
    (windows are read roughly in the order they end, and the oldest leave the range
    first; well under 1 KB per window of a small model). The default bound holds both
    sides of a tick (``MAX_WINDOWS_PER_SIDE`` each) with room to spare.

    Optional: ``observe`` works without it, parsing every window in range each time.
    The rollout service keeps one across ticks.
    """

    def __init__(self, max_windows: int = 2 * MAX_WINDOWS_PER_SIDE + 5_000) -> None:
        self.max_windows = max_windows
        self._items: OrderedDict[int, _Window] = OrderedDict()
        self._layouts: dict[tuple[tuple[str, ...], tuple[int, ...]],
                            tuple[tuple[str, ...], tuple[int, ...]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def windows(self, db: Database, rows: Sequence[tuple[int, float, int]]) -> list[_Window]:
        """The parsed windows of ``rows`` (id, end, n), in order; those not cached yet
        are read in one query."""
        with self._lock:
            get = self._items.get
            found = {i: hit for i, end, _n in rows
                     if (hit := get(i)) is not None and hit.end == end}
        missing = {int(i): float(end) for i, end, _n in rows if i not in found}
        if missing:
            parsed = {i: _UNREADABLE for i in missing}
            for window_id, text in db.execute(_SUMMARIES, [_ids(missing)]):
                parsed[int(window_id)] = self._parse(missing[int(window_id)], text)
            with self._lock:
                for window_id, window in parsed.items():
                    self._items.pop(window_id, None)  # a reused id: now the newest
                    self._items[window_id] = window
                while len(self._items) > self.max_windows:
                    self._items.popitem(last=False)
            found.update(parsed)
        return [found[i] for i, _end, _n in rows]

    def _parse(self, end: float, text: str) -> _Window:
        try:
            data = json.loads(text)
            columns = [*data["features"], *data["outputs"]]
            key = (tuple(str(c["name"]) for c in columns), tuple(len(c["c"]) for c in columns))
            with self._lock:
                layout = self._layouts.setdefault(key, key)
            # int32: a window's counts are far below 2**31; the sums are int64
            counts = np.fromiter((v for c in columns for v in c["c"]), dtype=np.int32,
                                 count=sum(key[1]))
            ref = data.get("ref")
            return _Window(end, ref if isinstance(ref, str) else None, layout, counts)
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("a drift window is not readable: skipped")
            return _Window(end, None, None, None)


class _Counts:
    """Exact sums of the bin counts of windows binned on one reference profile."""

    def __init__(self, profile: ReferenceProfile) -> None:
        self.profile = profile
        self.names = [c.name for c in profile.columns]
        self.bins = [c.bins for c in profile.columns]
        self.layout = (tuple(self.names), tuple(self.bins))
        self.offsets = np.cumsum([0, *self.bins])
        self.total = np.zeros(int(self.offsets[-1]), dtype=np.int64)
        self.predictions = 0

    def add(self, windows: Sequence[_Window], rows: Sequence[tuple[int, float, int]]) -> None:
        """Sum the windows binned on this profile (others are left out)."""
        digest = self.profile.digest
        ours = [(w, row[2]) for w, row in zip(windows, rows, strict=True)
                if w.ref == digest and w.counts is not None]
        # layouts are shared tuples: one comparison per distinct layout, not per window
        fits = {id(layout): layout == self.layout
                for layout in {id(w.layout): w.layout for w, _n in ours}.values()}
        usable = [(w.counts, n) for w, n in ours
                  if w.counts is not None and fits[id(w.layout)]]
        if len(usable) < len(ours):
            log.warning("%d drift window(s) do not fit their reference: skipped",
                        len(ours) - len(usable))
        total = self.total
        for counts, _n in usable:
            total += counts  # in place: cheaper than stacking thousands of rows
        self.predictions += sum(int(n) for _c, n in usable)

    def column(self, name: str) -> np.ndarray:
        j = self.names.index(name)
        return self.total[self.offsets[j]:self.offsets[j + 1]]


def registry_reference(store: Store, *, cached: bool = False) -> ReferenceLookup:
    """Reference profiles read from the registry's table in ``store`` (read only; None
    for an unknown version, one without a profile, or no registry in the database).
    The default of :func:`observe`. ``cached``: a profile is parsed again only when its
    stored text changed (the rollout service's lookup, called every tick)."""
    parsed: dict[tuple[str, str], tuple[str, ReferenceProfile | None]] = {}

    def lookup(model: str, version: str) -> ReferenceProfile | None:
        db = store.db
        if not _has(db, "registry_versions"):
            return None
        row = db.execute("SELECT reference_profile FROM registry_versions"
                         " WHERE model = ? AND version = ?", [model, version]).fetchone()
        text = row[0] if row is not None and row[0] else ""
        hit = parsed.get((model, version)) if cached else None
        if hit is not None and hit[0] == text:
            return hit[1]
        try:
            data = json.loads(text) if text else None
            profile = ReferenceProfile.from_dict(data) if data else None
            if cached:
                parsed[(model, version)] = (text, profile)
            return profile
        except (ValueError, DriftError) as e:
            log.warning("registry %s %s: unusable reference profile: %s", model, version, e)
            return None

    return lookup


def _dominant(windows: Sequence[_Window], rows: Sequence[tuple[int, float, int]]
              ) -> str | None:
    """The reference digest most of ``windows`` (by predictions) are binned on."""
    refs = {w.ref for w in windows}
    if len(refs) == 1:  # the usual case: every device bins on one profile
        return next(iter(refs))
    by_ref: dict[str, int] = {}
    for window, (_id, _end, n) in zip(windows, rows, strict=True):
        if window.ref is not None:
            by_ref[window.ref] = by_ref.get(window.ref, 0) + int(n)
    return max(by_ref, key=lambda r: by_ref[r]) if by_ref else None


def _drift(db: Database, scope: RolloutScope, reference: ReferenceLookup,
           cache: WindowCountCache | None) -> _Drift:
    """New-version windows of the assigned devices since the wave started versus the
    old-version windows of the control and assigned devices since ``started - 6 h``,
    both binned on the reference profile most new windows use (windows binned on
    another reference cannot be compared bin by bin and are left out)."""
    if not _has(db, "drift_windows"):
        return _Drift()
    cache = cache if cache is not None else WindowCountCache()
    new_rows = db.execute(_WINDOWS, [scope.model, _ids(set(scope.assigned_devices)),
                                     scope.since, scope.new_version]).fetchall()
    new_windows = cache.windows(db, new_rows)
    profile = reference(scope.model, scope.new_version)
    digest = _dominant(new_windows, new_rows)
    if digest is not None and (profile is None or digest != profile.digest):
        # the devices bin every version on the profile they were set up with
        profile = model_reference_profiles(db, scope.model).get(digest, profile)
    if profile is None:
        return _Drift()
    new, control = _Counts(profile), _Counts(profile)
    new.add(new_windows, new_rows)
    if not new.predictions:
        return _Drift()
    version, same = _old_version(scope)
    sql = _WINDOWS if same else _OTHER_VERSION_WINDOWS
    lookback = scope.started - CONTROL_LOOKBACK_S
    control_rows = db.execute(sql, [scope.model, _ids({*scope.control_devices,
                                                       *scope.assigned_devices}),
                                    lookback, version]).fetchall()
    control.add(cache.windows(db, control_rows), control_rows)
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
    ending at or after ``since`` (the newest ``MAX_WINDOWS_PER_SIDE``), on the binning
    most of them use (A/B comparisons). Empty when there are none or their reference
    profile is unknown."""
    db = store.db
    if not _has(db, "drift_windows"):
        return []
    rows = db.execute(_WINDOWS, [model, _ids(set(devices)), since, version]).fetchall()
    windows = WindowCountCache().windows(db, rows)
    digest = _dominant(windows, rows)
    profile = None if digest is None else model_reference_profiles(db, model).get(digest)
    if profile is None:
        return []
    counts = _Counts(profile)
    counts.add(windows, rows)
    return [float(v) for c in profile.outputs for v in counts.column(c.name)]


# -- the observation -------------------------------------------------------------------


def observe(store: Store, scope: RolloutScope, now: float, *,
            reference: ReferenceLookup | None = None,
            window_cache: WindowCountCache | None = None,
            install_cache: InstallStateCache | None = None,
            installs_only: bool = False) -> Observations:
    """What the current wave and the control group reported, as of ``now`` (unix s).

    ``reference`` gives model versions' reference profiles (drift compares on the new
    version's bins); by default they are read from the registry's table
    (:func:`registry_reference`). Without the new version's profile the drift fields are
    None and the prediction counts 0. ``window_cache`` keeps windows' bin counts across
    calls (see :class:`WindowCountCache`), ``install_cache`` the wave's install states
    (see :class:`InstallStateCache`). ``installs_only``: only the wave's install states
    and lost devices (what the policy judges inside the bake time); every other field
    keeps its "no data" default.
    """
    db = store.db
    states = device_states(store, scope.wave_devices, scope.new_target, scope.since,
                           cache=install_cache)
    count = {s: 0 for s in DeviceState}
    for state in states.values():
        count[state] += 1
    lost = _lost(db, scope.wave_devices, scope.since, scope.lost_after_s, now)
    if installs_only:
        return Observations(
            wave_devices=len(states), installed=count[DeviceState.INSTALLED],
            failed=count[DeviceState.FAILED] + count[DeviceState.ROLLED_BACK],
            downloading=count[DeviceState.DOWNLOADING], lost=lost,
            shadow_enabled=scope.shadow)

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
        lost=lost,
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


__all__ = ["CONTROL_LOOKBACK_S", "InstallStateCache", "RolloutScope", "WindowCountCache",
           "device_states",
           "observe", "output_counts", "registry_reference"]
