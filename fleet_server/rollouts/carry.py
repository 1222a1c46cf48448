"""Carrying rollout decisions out: director assignments signed in bounded batches.

A decision (a new wave, a roll back, the end of shadow mode) is committed first, as
``rollout_devices.assign`` values (``assigning``, ``reverting``, ``shadowing``,
``unshadowing``); this module turns them into signed director assignments and marks each
row done (``assigned``, ``reverted``, ``not_reverted``, ``shadow``, ``pending``). That
column is the crash-safety mechanism: a server killed at any point finds the rows still
to do and does them again (signing twice only adds a version).

Rules that keep operators responsive and concurrent decisions correct:

* The rollouts lock (``RolloutService.lock``) is held only to claim a batch (at most
  ``batch_size`` rows, marked in flight in memory) and to mark it done; the director is
  signed outside it (``Repository.assign_many``, one batch per call).
* Marking is conditional: a row is marked only if it still holds the value it was
  claimed with. An operator's roll back that turned an in-flight ``assigning`` row into
  ``reverting`` wins: the row stays ``reverting`` and the next batch reverts what was
  just signed. Operators' changes to rows leave rows in flight alone where that matters
  (see ``RolloutService``: an abort leaves in-flight ``assigning`` rows to be marked
  ``assigned``, the end of shadow mode turns in-flight ``shadowing`` rows into
  ``unshadowing``).
* Only one carrier signs at a time (``_carrier``). Small sets (at most ``inline_max``
  rows) are carried out by the caller, after it released the rollouts lock; larger ones
  by a background thread that runs until nothing is left (the scheduler's tick kicks it
  too, which also resumes work after a restart).
* What is carried out depends on the rollout's status: a running rollout does all of
  it; a paused one holds back what pushes the candidate (``assigning``, ``shadowing``)
  and still returns devices (``reverting``, ``unshadowing``); an ended one never signs
  the candidate: a leftover ``assigning`` row (a crash) is resolved from what the
  director assigns now.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.fleet_server.rollouts.model import RolloutStatus
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

BATCH_SIZE = 200
#: rollout_devices.assign values whose director assignment is still to be signed
PENDING_WORK = ("assigning", "reverting", "shadowing", "unshadowing")
_RUNNING = PENDING_WORK
_PAUSED = ("reverting", "unshadowing")
_ENDED = PENDING_WORK  # "assigning"/"shadowing" are resolved there, never signed

#: hint(device_id, model, target, version, rollout=..., shadow=...)
Hint = Callable[..., None]


def workable(status: str) -> tuple[str, ...]:
    """The ``assign`` values a rollout in ``status`` carries out now."""
    if status == RolloutStatus.RUNNING.value:
        return _RUNNING
    if status == RolloutStatus.PAUSED.value:
        return _PAUSED
    return _ENDED


def version_of(target: str, model: str) -> str:
    """``digits-1.0.0.tar`` -> ``1.0.0`` (the release naming of ``target_name_for``)."""
    stem = target.removesuffix(".tar")
    return stem[len(model) + 1:] if stem.startswith(model + "-") else stem


@dataclass
class CarryStats:
    """What the carrier did for one rollout (times in milliseconds)."""

    batches: int = 0
    devices: int = 0
    signed: int = 0
    total_ms: float = 0.0
    last_batch_ms: float = 0.0
    max_batch_ms: float = 0.0
    max_lock_ms: float = 0.0  # longest hold of the rollouts lock by one claim or mark

    def view(self) -> dict[str, Any]:
        return {"batches": self.batches, "devices": self.devices, "signed": self.signed,
                "total_ms": round(self.total_ms, 1),
                "per_device_ms": round(self.total_ms / self.devices, 3) if self.devices
                else None,
                "last_batch_ms": round(self.last_batch_ms, 1),
                "max_batch_ms": round(self.max_batch_ms, 1),
                "max_lock_ms": round(self.max_lock_ms, 3)}


@dataclass
class _Plan:
    """One batch: what to sign, what to hint, how to mark each row (claimed value,
    new value, device)."""

    assignments: list[Any] = field(default_factory=list)
    hints: list[tuple[Any, ...]] = field(default_factory=list)
    marks: list[tuple[str, str, str]] = field(default_factory=list)


class Carrier:
    """Carries out the pending director assignments of rollouts (see the module doc)."""

    def __init__(self, store: Store, lock: threading.RLock, *,
                 repository: Callable[[], Any], hint: Hint, clock: Callable[[], float],
                 batch_size: int = BATCH_SIZE, inline_max: int = BATCH_SIZE) -> None:
        self._store = store
        self._lock = lock
        self._repository = repository
        self._hint = hint
        self._clock = clock
        self.batch_size = batch_size
        self.inline_max = inline_max
        self._carrier = threading.Lock()  # one signer at a time
        self._in_flight: set[tuple[int, str]] = set()  # guarded by self._lock
        self._worker_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._more = False
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._stats: dict[int, CarryStats] = {}

    # -- what others ask -------------------------------------------------------------

    def in_flight(self, rollout_id: int) -> list[str]:
        """Devices of ``rollout_id`` being signed now (call with the rollouts lock)."""
        return [d for r, d in self._in_flight if r == rollout_id]

    def stats(self, rollout_id: int) -> dict[str, Any]:
        return {**self._stats.get(rollout_id, CarryStats()).view(),
                "batch_size": self.batch_size, "inline_max": self.inline_max}

    def pending(self, rollout_id: int, status: str) -> int:
        """Rows of ``rollout_id`` this carrier would work on now."""
        kinds = workable(status)
        return int(self._store.db.execute(
            f"SELECT COUNT(*) FROM rollout_devices WHERE rollout_id = ? AND assign IN"  # noqa: S608 - placeholders only
            f" ({', '.join('?' * len(kinds))})", [rollout_id, *kinds]).fetchone()[0])

    def rollouts_with_work(self) -> list[int]:
        rows = self._store.db.execute(
            "SELECT DISTINCT rd.rollout_id, r.status FROM rollout_devices rd JOIN rollouts r"
            " ON r.id = rd.rollout_id WHERE rd.assign IN (?, ?, ?, ?) ORDER BY 1",
            list(PENDING_WORK)).fetchall()
        return [int(r[0]) for r in rows if workable(r[1])]

    # -- starting work ---------------------------------------------------------------

    def dispatch(self, rollout_id: int, status: str) -> None:
        """Carry out ``rollout_id``'s pending rows: here if they are few and no other
        carrier is signing, else in the background. Never call with the rollouts lock."""
        count = self.pending(rollout_id, status)
        if not count:
            return
        if count <= self.inline_max and self._carrier.acquire(blocking=False):
            try:
                self.carry_all(rollout_id)
            except Exception:  # the decision is committed; the next tick tries again
                log.exception("rollout %d: carrying out failed; retried on the next tick",
                              rollout_id)
            finally:
                self._carrier.release()
            return
        self.kick()

    def kick(self) -> None:
        """Wake the background carrier (one long-lived thread: it keeps one database
        connection; it sleeps when nothing is left)."""
        with self._worker_lock:
            if self._stopping:
                return
            self._more = True
            self._idle.clear()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._drain, daemon=True,
                                                name="rollouts-carry-out")
                self._worker.start()
            self._wake.set()

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the background carrier after its current batch (before the store closes:
        a connection closed under a running query crashes the process). Rows it did not
        get to stay pending work for the next start."""
        with self._worker_lock:
            self._stopping = True
            worker = self._worker
            self._wake.set()
        if worker is not None:
            worker.join(timeout_s)
            if worker.is_alive():
                log.warning("the rollout carrier did not stop within %.0f s", timeout_s)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until the background carrier has nothing left; False on timeout."""
        return self._idle.wait(timeout_s)

    def _drain(self) -> None:
        while True:
            self._wake.wait()
            with self._worker_lock:
                if self._stopping:
                    self._idle.set()
                    return
                if not self._more:
                    self._wake.clear()
                    self._idle.set()
                    continue
                self._more = False
            with self._carrier:
                try:
                    rollouts = self.rollouts_with_work()
                except Exception:  # retried on the next kick (every tick)
                    log.exception("looking for rollout assignments to sign failed")
                    rollouts = []
                for rollout_id in rollouts:
                    if self._stopping:
                        break
                    try:
                        self.carry_all(rollout_id)
                    except Exception:  # retried on the next kick (every tick)
                        log.exception("rollout %d: carrying out failed", rollout_id)

    # -- the work --------------------------------------------------------------------

    def carry_all(self, rollout_id: int) -> None:
        """Batches until ``rollout_id`` has nothing left to do now (hold ``_carrier``)."""
        while not self._stopping:
            claimed, marked = self._batch(rollout_id)
            if not claimed or not marked:
                return

    def _batch(self, rollout_id: int) -> tuple[int, int]:
        started = time.perf_counter()
        with self._lock:
            rows = list(self._store.db["rollouts"].rows_where("id = ?", [rollout_id]))
            if not rows:
                return 0, 0
            row = rows[0]
            kinds = workable(row["status"])
            todo = self._store.db.execute(
                "SELECT device_id, assign, previous_target, assigned_at FROM rollout_devices"  # noqa: S608 - placeholders only
                " WHERE"
                f" rollout_id = ? AND assign IN ({', '.join('?' * len(kinds))})"
                " ORDER BY position LIMIT ?", [rollout_id, *kinds, self.batch_size]
            ).fetchall()
            self._in_flight.update((rollout_id, r[0]) for r in todo)
        stats = self._stats.setdefault(rollout_id, CarryStats())
        stats.max_lock_ms = max(stats.max_lock_ms, (time.perf_counter() - started) * 1000)
        if not todo:
            return 0, 0
        plan, done = _Plan(), []
        try:
            plan = self._plan(row, todo)
            if plan.assignments:
                self._repository().assign_many(plan.assignments)
            done = plan.marks  # signed: what to record (a failure records nothing)
            for args, kwargs in plan.hints:
                self._hint(*args, **kwargs)
        finally:
            marked = self._mark(row, done, [r[0] for r in todo], stats)
        ms = (time.perf_counter() - started) * 1000
        stats.batches += 1
        stats.devices += len(todo)
        stats.signed += len(plan.assignments)
        stats.total_ms += ms
        stats.last_batch_ms = ms
        stats.max_batch_ms = max(stats.max_batch_ms, ms)
        log.info("rollout %d: %d row(s) carried out, %d director assignment(s) signed in "
                 "%.0f ms", rollout_id, len(todo), len(plan.assignments), ms)
        return len(todo), marked

    def _plan(self, row: dict[str, Any],
              todo: Sequence[tuple[str, str, str | None, float | None]]) -> _Plan:
        """What to sign for each claimed row (reads the director; records what the
        devices run before they are signed the candidate, committed before signing)."""
        from edgefleet.fleet_server.updates.repository import Assignment

        rollout_id, target, model = int(row["id"]), row["target"], row["model"]
        running = row["status"] == RolloutStatus.RUNNING.value
        shadow_rate = json.loads(row["spec"]).get("shadow_rate")
        repo = self._repository()
        current = repo.assigned_targets(
            [d for d, a, _, _ in todo if a in ("assigning", "reverting")])
        previous = {d: p for d, _, p, _ in todo}
        # what they run now, remembered before they are signed the candidate (a device
        # already on it was signed before a crash and keeps no previous)
        record = [(None if current[d] == target else current[d], rollout_id, d)
                  for d, a, p, _ in todo if a == "assigning" and p is None and running]
        if record:  # no rollouts lock: nothing else writes a claimed row's previous
            with self._store.transaction() as db:
                db.conn.executemany(
                    "UPDATE rollout_devices SET previous_target = ? WHERE rollout_id = ?"
                    " AND device_id = ? AND previous_target IS NULL", record)
            previous.update((d, p) for p, _, d in record)
        from_target = None
        if row["from_version"]:
            from edgefleet.fleet_server.updates.publish import target_name_for

            from_target = target_name_for(model, row["from_version"])
        listed: set[str] | None = None
        plan = _Plan()

        def sign(device_id: str, what: str, *, shadow: str | None = None) -> None:
            plan.assignments.append(Assignment(device_id, what, shadow, shadow_rate or 0.1))
            shadow_view = None if shadow is None else {
                "version": row["version"], "target": target, "sample_rate": shadow_rate}
            plan.hints.append(((device_id, model, what, version_of(what, model)),
                               {"rollout": rollout_id, "shadow": shadow_view}))

        for device_id, assign, _, assigned_at in todo:
            before = previous.get(device_id) or ""  # shadow rows always have one
            if assign == "assigning" and running:
                sign(device_id, target)
                plan.marks.append((assign, "assigned", device_id))
            elif assign == "assigning":  # an ended rollout's leftover (a crash)
                done = ("assigned" if current[device_id] == target
                        else "unshadowing" if shadow_rate is not None and before
                        else "pending")
                plan.marks.append((assign, done, device_id))
            elif assign == "shadowing" and running:
                sign(device_id, before, shadow=target)
                plan.marks.append((assign, "shadow", device_id))
            elif assign in ("shadowing", "unshadowing"):
                sign(device_id, before)
                plan.marks.append((assign, "pending", device_id))
            else:  # reverting
                now = current[device_id]
                back = before or from_target
                if now != target:
                    if assigned_at is None:
                        # never signed the candidate (it was still to be when the roll
                        # back came; no one else assigns a device with work pending): it
                        # is where the rollout found it, the candidate perhaps as shadow
                        if shadow_rate is not None and before and now == before:
                            sign(device_id, before)
                        plan.marks.append((assign, "reverted", device_id))
                    else:
                        # moved on since (another rollout, an operator): not ours to undo
                        log.info("rollout %d: device %s now runs %s; not rolled back",
                                 rollout_id, device_id, now)
                        plan.marks.append((assign, "not_reverted", device_id))
                    continue
                if listed is None:
                    listed = set(repo.targets())
                if back is not None and back in listed:
                    sign(device_id, back)
                    plan.marks.append((assign, "reverted", device_id))
                else:
                    log.warning("rollout %d: device %s had no earlier assignment and no "
                                "from-version release; it keeps %s", rollout_id, device_id,
                                target)
                    plan.marks.append((assign, "not_reverted", device_id))
        return plan

    def _mark(self, row: dict[str, Any], marks: Sequence[tuple[str, str, str]],
              claimed: Sequence[str], stats: CarryStats) -> int:
        """Record what was done, for the rows still holding the value they were claimed
        with; release the claim; once a running rollout's wave is wholly signed, start
        its bake clock over (the wave's evidence still counts from the wave's start)."""
        rollout_id = int(row["id"])
        started = time.perf_counter()
        now = self._clock()
        marked = 0
        with self._lock:
            try:
                if marks:
                    with self._store.transaction() as db:
                        before = db.conn.total_changes
                        db.conn.executemany(
                            "UPDATE rollout_devices SET assign = ?, assigned_at = CASE WHEN"
                            " ? IN ('assigned', 'reverted') THEN ? ELSE assigned_at END"
                            " WHERE rollout_id = ? AND device_id = ? AND assign = ?",
                            [(new, new, now, rollout_id, d, old) for old, new, d in marks])
                        marked = db.conn.total_changes - before
                        if any(old == "assigning" for old, _, _ in marks):
                            db.execute(
                                "UPDATE rollouts SET bake_started_at = max(bake_started_at,"
                                " ?) WHERE id = ? AND status = ? AND NOT EXISTS (SELECT 1"
                                " FROM rollout_devices WHERE rollout_id = ? AND assign ="
                                " 'assigning')", [now, rollout_id, RolloutStatus.RUNNING.value,
                                                  rollout_id])
            finally:
                self._in_flight.difference_update((rollout_id, d) for d in claimed)
        stats.max_lock_ms = max(stats.max_lock_ms, (time.perf_counter() - started) * 1000)
        return marked
