"""Rollouts: the database state and the work of carrying decisions out.

One :class:`RolloutService` per app (``rollout_service(services)``). The scheduler calls
:meth:`RolloutService.tick` every few seconds: for every running rollout it observes the
current wave (``observe``, outside the lock), asks the pure policy for a decision
(``policy.decide``) and applies it (under the lock, if nothing changed meanwhile), then
hands pending director assignments to the carrier (``carry``). Every state change is
committed before the side effects it implies and marked done after them (the
``rollout_devices.assign`` column), so a server killed at any point resumes every rollout
where it was, without repeating or losing a wave.

The lock (``RolloutService.lock``) guards state changes only: it is never held while
the director signs or while a wave is observed, so operator actions (pause, abort,
roll back) answer at once even while a 5,000-device wave is being signed; the signing
respects them (see ``carry``). A wave advances only once every assignment of the
current one is signed.

Devices learn about an assignment from the signed director repository; the retained MQTT
``desired`` message sent beside it is only a hint that makes them check at once.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgefleet.fleet_server.audit import SYSTEM, Actor
from edgefleet.fleet_server.rollouts import observe as observe_module
from edgefleet.fleet_server.rollouts.carry import (
    BATCH_SIZE,
    Carrier,
)
from edgefleet.fleet_server.rollouts.errors import (
    RolloutConflict,
    RolloutInvalid,
    RolloutNotFound,
)
from edgefleet.fleet_server.rollouts.model import (
    Action,
    Decision,
    DeviceState,
    GateResult,
    RolloutState,
    RolloutStatus,
)
from edgefleet.fleet_server.rollouts.policy import decide
from edgefleet.fleet_server.rollouts.spec import RolloutSpec, TargetSelector
from edgefleet.fleet_server.rollouts.waves import order_devices, pick_percent, wave_sizes
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

EXTRAS_KEY = "rollouts"
PUBLISH_KEY = "mqtt_publish"  # services.extras: Callable[[topic, payload, retain], bool]
TICK_INTERVAL_S = 5.0
_ACTIVE = (RolloutStatus.RUNNING.value, RolloutStatus.PAUSED.value)
# what a tick's decision rests on: changed meanwhile, the decision is dropped
_DECIDED_ON = ("status", "wave", "bake_started_at", "promoted")
Publish = Callable[[str, bytes, bool], bool]


def _iso(ts: float | None = None) -> str:
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.replace(microsecond=0).isoformat()


def select_devices(db: Any, sel: TargetSelector, seed: str) -> list[str]:
    """The active devices ``sel`` matches (``percent`` picks a random share by ``seed``).

    Raises:
        RolloutInvalid: a listed device is unknown or decommissioned, or nothing matches.
    """
    if sel.devices:
        rows = db.execute(
            "SELECT d.id FROM devices d JOIN json_each(?) j ON j.value = d.id"
            " WHERE d.status = 'active'", [json.dumps(list(sel.devices))]).fetchall()
        found = {r[0] for r in rows}
        missing = [d for d in sel.devices if d not in found]
        if missing:
            raise RolloutInvalid(f"unknown or decommissioned device(s): "
                                 f"{', '.join(missing[:10])}")
        devices = list(sel.devices)
    else:
        where, args = ["status = 'active'"], []
        if sel.group:
            where.append("group_name = ?")
            args.append(sel.group)
        for tag in sel.tags:
            where.append("id IN (SELECT device_id FROM device_tags WHERE tag = ?)")
            args.append(tag)
        rows = db.execute(f"SELECT id FROM devices WHERE {' AND '.join(where)}",  # noqa: S608 - fixed clauses, values bound
                          args).fetchall()
        devices = [r[0] for r in rows]
    if not devices:
        raise RolloutInvalid("no active device matches the target")
    if sel.percent < 100.0:
        devices = pick_percent(devices, sel.percent, seed)
    return devices


def busy_devices(db: Any, devices: Sequence[str]) -> list[str]:
    """Which of ``devices`` are in an active rollout or a running A/B experiment, or still
    have a director assignment of an ended one to be signed (or recorded)."""
    listed = json.dumps(list(devices))
    rows = db.execute(
        "SELECT rd.device_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id"
        " JOIN json_each(?) j ON j.value = rd.device_id WHERE (r.status IN (?, ?)"
        " OR rd.assign IN ('assigning', 'reverting', 'shadowing', 'unshadowing'))"
        " UNION SELECT ed.device_id FROM experiment_devices ed"
        " JOIN experiments e ON e.id = ed.experiment_id"
        " JOIN json_each(?) k ON k.value = ed.device_id"
        " WHERE e.status = 'running' OR ed.assign = 'assigning'",
        [listed, *_ACTIVE, listed]).fetchall()
    return sorted(r[0] for r in rows)


def _gate_json(gates: Sequence[GateResult]) -> list[dict[str, Any]]:
    return [{"name": g.name, "status": g.status.value, "value": g.value,
             "threshold": g.threshold, "detail": g.detail} for g in gates]


def _actor_ref(actor: Actor) -> str:
    return f"{actor.kind.value}:{actor.name}"


@dataclass
class _Ticks:
    """Durations of the policy evaluation ticks of one rollout (milliseconds)."""

    count: int = 0
    last_ms: float = 0.0
    max_ms: float = 0.0
    recent: deque[float] | None = None

    def add(self, ms: float) -> None:
        if self.recent is None:
            self.recent = deque(maxlen=500)
        self.count += 1
        self.last_ms = ms
        self.max_ms = max(self.max_ms, ms)
        self.recent.append(ms)

    def view(self) -> dict[str, Any]:
        p50 = statistics.median(self.recent) if self.recent else None
        return {"count": self.count, "last_ms": round(self.last_ms, 3),
                "max_ms": round(self.max_ms, 3),
                "p50_ms": None if p50 is None else round(p50, 3)}


class RolloutService:
    """Creates, drives and answers for rollouts. Thread-safe (one lock for all changes).

    ``batch_size``: director assignments signed per batch; ``inline_max``: at most this
    many pending assignments are signed by the calling request or tick itself, more go to
    a background thread (see ``carry``).
    """

    def __init__(self, store: Store, audit: Any, *, repository: Callable[[], Any],
                 registry: Callable[[], Any], publish: Callable[[], Publish | None],
                 clock: Callable[[], float] = time.time, batch_size: int = BATCH_SIZE,
                 inline_max: int = BATCH_SIZE) -> None:
        self._store = store
        self._audit = audit
        self._repository = repository
        self._registry = registry
        self._publish = publish
        self._clock = clock
        self.lock = threading.RLock()  # one writer at a time: ticks, operators, experiments
        self._ticks: dict[int, _Ticks] = {}
        self._full_ticks: dict[int, _Ticks] = {}  # those that observed every gate
        self._tick_wall = _Ticks()  # whole scheduler ticks, carrying out included
        self._windows = observe_module.WindowCountCache()  # drift windows parsed once
        self._installs = observe_module.InstallStateCache()  # update events folded once
        self._references = observe_module.registry_reference(store, cached=True)
        self.carrier = Carrier(store, self.lock, repository=repository, hint=self.hint,
                               clock=clock, batch_size=batch_size, inline_max=inline_max)

    # -- create ---------------------------------------------------------------------

    def release_target(self, model: str, version: str) -> str:
        """The bundle (TUF target) of a version that may go to devices.

        Raises:
            RolloutInvalid: the version is not registered, or not in staging/production.
            RolloutConflict: its release is not published to the image repository.
        """
        from edgefleet.fleet_server.registry.errors import NotFoundError
        from edgefleet.fleet_server.updates.publish import target_name_for

        try:
            record = self._registry().get_version(model, version)
        except NotFoundError as e:
            raise RolloutInvalid(f"no registered version {model}@{version}") from e
        if record["stage"] not in ("staging", "production"):
            raise RolloutInvalid(f"{model}@{version} is in stage {record['stage']}; "
                                 "promote it to staging or production")
        target = target_name_for(model, version)
        if target not in self._repository().targets():
            raise RolloutConflict(f"the image repository does not list {target}: "
                                  "publish the release first (edgefleet release publish)")
        return target

    def create(self, spec: RolloutSpec, actor: Actor) -> dict[str, Any]:
        """Start a rollout: pick its devices, size its waves, assign the first wave.

        Raises:
            RolloutInvalid: unknown version or devices, no device matches, bad stage.
            RolloutConflict: the release is not published, or a device is already in an
                active rollout.
        """
        from edgefleet.fleet_server.updates.publish import target_name_for

        target = self.release_target(spec.model, spec.version)
        repo = self._repository()
        if spec.from_version and target_name_for(spec.model, spec.from_version) \
                not in repo.targets():
            raise RolloutConflict(
                f"the image repository does not list {spec.model} {spec.from_version}: a roll "
                "back could not return devices to it; publish it or leave from_version out")
        devices = select_devices(self._store.db, spec.target, f"{spec.model}:{spec.version}")
        now = self._clock()
        seed = f"{spec.model}:{spec.version}:{now!r}"
        ordered = order_devices(devices, seed)
        waves = wave_sizes(len(ordered), spec.fractions)
        # what the first wave runs now (a roll back returns there); with shadow mode,
        # what everyone else runs too (their assignment keeps it, plus the candidate).
        # Read under the lock, in the same critical section as the busy check: signed
        # work of another rollout is recorded under this lock, so no device read here
        # can still change behind the check.
        known = ordered if spec.shadow_rate is not None else ordered[:waves[0]]
        with self.lock:
            previous = repo.assigned_targets(known)
            with self._store.transaction() as db:
                busy = busy_devices(db, ordered)
                if busy:
                    shown = ", ".join(busy[:5]) + (" ..." if len(busy) > 5 else "")
                    raise RolloutConflict(f"{len(busy)} device(s) already in an active "
                                          f"rollout or experiment: {shown}")
                rollout_id = int(db["rollouts"].insert({
                    "name": spec.name or f"{spec.model} {spec.version}",
                    "model": spec.model, "version": spec.version, "target": target,
                    "from_version": spec.from_version, "status": RolloutStatus.RUNNING.value,
                    "spec": json.dumps(spec.to_json()), "waves": json.dumps(list(waves)),
                    "wave": 0, "wave_started_at": now, "bake_started_at": now,
                    "started_at": now, "promoted": 0,
                    "seed": seed, "created_by": _actor_ref(actor), "created_at": _iso(now),
                    "updated_at": _iso(now),
                }).last_pk)
                db["rollout_devices"].insert_all(
                    ({"rollout_id": rollout_id, "device_id": d, "position": i,
                      "wave": 0 if i < waves[0] else None,
                      "assign": ("assigning" if i < waves[0]
                                 else "shadowing" if previous.get(d) else "pending"),
                      "previous_target": previous.get(d)}
                     for i, d in enumerate(ordered)), batch_size=500)
                self._log(db, rollout_id, 0, "create", f"{len(ordered)} device(s) in "
                          f"{len(waves)} wave(s) of {list(waves)}", None, actor)
                self._audit.record(actor, "rollout.create", "rollout", str(rollout_id), None,
                                   {**spec.to_json(), "target_name": target,
                                    "devices": len(ordered), "waves": list(waves)})
            log.info("rollout %d: %s@%s to %d device(s), waves %s", rollout_id, spec.model,
                     spec.version, len(ordered), list(waves))
        self._dispatch(rollout_id)
        return self.get(rollout_id)

    @staticmethod
    def assigned_target(repo: Any, device_id: str) -> str | None:
        """The bundle the director assigns ``device_id`` now, if any."""
        current = repo.assignment(device_id)
        return None if current is None else str(current.path)

    # -- reads ----------------------------------------------------------------------

    def _row(self, rollout_id: int) -> dict[str, Any]:
        rows = list(self._store.db["rollouts"].rows_where("id = ?", [rollout_id]))
        if not rows:
            raise RolloutNotFound(f"no rollout {rollout_id}")
        return rows[0]

    def list_rollouts(self, *, status: str | None = None, model: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if model:
            where.append("model = ?")
            args.append(model)
        clause = " AND ".join(where) or None
        table = self._store.db["rollouts"]
        total = table.count_where(clause or "1", args)
        rows = table.rows_where(clause, args, order_by="id DESC", limit=limit, offset=offset)
        return [self._summary(r) for r in rows], total

    def _summary(self, row: Mapping[str, Any]) -> dict[str, Any]:
        waves = json.loads(row["waves"])
        return {"id": row["id"], "name": row["name"], "model": row["model"],
                "version": row["version"], "target": row["target"],
                "from_version": row["from_version"], "status": row["status"],
                "wave": row["wave"], "wave_count": len(waves), "devices": waves[-1],
                "last_action": row["last_action"], "created_by": row["created_by"],
                "created_at": row["created_at"], "updated_at": row["updated_at"],
                "finished_at": row["finished_at"]}

    def get(self, rollout_id: int) -> dict[str, Any]:
        """The rollout with its waves, device state counts, last gates and tick times."""
        row = self._row(rollout_id)
        spec = json.loads(row["spec"])
        waves = json.loads(row["waves"])
        states = self._device_states(row)
        per_wave: list[dict[str, int]] = [{} for _ in waves]
        for wave, state in states.values():
            if wave is not None:
                per_wave[wave][state.value] = per_wave[wave].get(state.value, 0) + 1
        current = int(row["wave"])
        done = row["status"] == RolloutStatus.COMPLETED.value
        wave_views = [{
            "index": i, "size": n - (waves[i - 1] if i else 0), "cumulative": n,
            "fraction": spec["fractions"][min(i, len(spec["fractions"]) - 1)],
            "state": ("done" if i < current or done else "current" if i == current
                      else "pending"),
            "started_at": row["wave_started_at"] if i == current else None,
            "devices": per_wave[i],
        } for i, n in enumerate(waves)]
        counts: dict[str, int] = {}
        for _, state in states.values():
            counts[state.value] = counts.get(state.value, 0) + 1
        ticks = self._ticks.get(rollout_id, _Ticks())
        pending = sum(1 for _, s in states.values() if s is DeviceState.PENDING)
        return {**self._summary(row), "spec": spec, "waves": wave_views,
                "wave_started_at": row["wave_started_at"], "started_at": row["started_at"],
                "bake_started_at": row["bake_started_at"],
                "bake_ends_at": row["bake_started_at"] + spec["bake_s"],
                "promoted": bool(row["promoted"]), "device_states": counts,
                "gates": json.loads(row["last_gates"]) if row["last_gates"] else [],
                "ticks": ticks.view(),
                "full_ticks": self._full_ticks.get(rollout_id, _Ticks()).view(),
                "scheduler_ticks": self._tick_wall.view(),
                "carry_out": {**self.carrier.stats(rollout_id),
                              "pending": self.carrier.pending(rollout_id, row["status"]),
                              "devices_pending": pending}}

    def _device_states(self, row: Mapping[str, Any]
                       ) -> dict[str, tuple[int | None, DeviceState]]:
        rows = self._store.db.execute(
            "SELECT device_id, wave, assign FROM rollout_devices WHERE rollout_id = ?"
            " ORDER BY position", [row["id"]]).fetchall()
        assigned = [r[0] for r in rows if r[2] in ("assigning", "assigned")]
        reported = observe_module.device_states(self._store, assigned, row["target"],
                                                float(row["started_at"]),
                                                cache=self._installs)
        out: dict[str, tuple[int | None, DeviceState]] = {}
        for device_id, wave, assign in rows:
            if assign in ("reverting", "reverted"):
                state = DeviceState.ROLLED_BACK
            elif assign == "not_reverted":
                state = DeviceState.NOT_REVERTED
            elif assign in ("pending", "shadowing", "shadow", "unshadowing"):
                state = DeviceState.PENDING
            else:
                state = reported.get(device_id, DeviceState.PENDING)
            out[device_id] = (wave, state)
        return out

    def devices(self, rollout_id: int, *, state: str | None = None, wave: int | None = None,
                limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Per device: its wave, state and the target a roll back returns it to."""
        row = self._row(rollout_id)
        states = self._device_states(row)
        previous = dict(self._store.db.execute(
            "SELECT device_id, previous_target FROM rollout_devices WHERE rollout_id = ?",
            [rollout_id]).fetchall())
        items = [{"device_id": d, "wave": w, "state": s.value, "previous_target": previous[d]}
                 for d, (w, s) in states.items()
                 if (state is None or s.value == state) and (wave is None or w == wave)]
        return items[offset:offset + limit], len(items)

    def decisions(self, rollout_id: int, *, limit: int = 100, offset: int = 0
                  ) -> tuple[list[dict[str, Any]], int]:
        """The decision log, oldest first."""
        self._row(rollout_id)
        table = self._store.db["rollout_decisions"]
        total = table.count_where("rollout_id = ?", [rollout_id])
        rows = table.rows_where("rollout_id = ?", [rollout_id], order_by="id",
                                limit=limit, offset=offset)
        return [{"id": r["id"], "ts": r["ts"], "at": _iso(r["ts"]), "wave": r["wave"],
                 "action": r["action"], "reason": r["reason"], "actor": r["actor"],
                 "gates": json.loads(r["gates"]) if r["gates"] else None}
                for r in rows], total

    # -- operator actions ------------------------------------------------------------

    def pause(self, rollout_id: int, actor: Actor, reason: str = "") -> dict[str, Any]:
        """Stop evaluating and advancing (devices keep what they were assigned)."""
        return self._set_status(rollout_id, actor, "pause", RolloutStatus.PAUSED,
                                (RolloutStatus.RUNNING,), reason)

    def resume(self, rollout_id: int, actor: Actor, reason: str = "") -> dict[str, Any]:
        """Run a paused rollout again; the current wave's bake time starts over."""
        return self._set_status(rollout_id, actor, "resume", RolloutStatus.RUNNING,
                                (RolloutStatus.PAUSED,), reason, restart_bake=True)

    def abort(self, rollout_id: int, actor: Actor, reason: str = "") -> dict[str, Any]:
        """End the rollout; devices keep what they were assigned (roll back to undo)."""
        return self._set_status(rollout_id, actor, "abort", RolloutStatus.ABORTED,
                                (RolloutStatus.RUNNING, RolloutStatus.PAUSED), reason)

    def promote(self, rollout_id: int, actor: Actor, reason: str = "") -> dict[str, Any]:
        """Skip the rest of the current wave's bake time: evaluate the gates now."""
        with self.lock:
            row = self._row(rollout_id)
            if row["status"] != RolloutStatus.RUNNING.value:
                raise RolloutConflict(f"rollout {rollout_id} is {row['status']}; only a "
                                      "running rollout can be promoted")
            with self._store.transaction() as db:
                db.execute("UPDATE rollouts SET promoted = 1, updated_at = ? WHERE id = ?",
                           [_iso(self._clock()), rollout_id])
                self._log(db, rollout_id, row["wave"], "promote",
                          reason or "operator skipped the rest of the bake time", None, actor)
                self._audit.record(actor, "rollout.promote", "rollout", str(rollout_id),
                                   {"wave": row["wave"]}, {"wave": row["wave"],
                                                           "reason": reason})
        self._tick_one(rollout_id)
        self._dispatch(rollout_id)
        return self.get(rollout_id)

    def rollback(self, rollout_id: int, actor: Actor, reason: str = "") -> dict[str, Any]:
        """Assign every touched device its previous bundle again and end the rollout."""
        with self.lock:
            row = self._row(rollout_id)
            if row["status"] not in (*_ACTIVE, RolloutStatus.ABORTED.value):
                # a completed rollout is undone by a new rollout, never behind the back of
                # whatever rollout its devices joined since
                raise RolloutConflict(f"rollout {rollout_id} is {row['status']}; only a "
                                      "running, paused or aborted rollout can be rolled back")
            self._start_rollback(row, reason or "operator rolled the rollout back", [],
                                 actor)
        self._dispatch(rollout_id)
        return self.get(rollout_id)

    def _set_status(self, rollout_id: int, actor: Actor, action: str,  # noqa: PLR0917
                    status: RolloutStatus, allowed: tuple[RolloutStatus, ...], reason: str,
                    *, restart_bake: bool = False) -> dict[str, Any]:
        with self.lock:
            row = self._row(rollout_id)
            if row["status"] not in {s.value for s in allowed}:
                raise RolloutConflict(f"rollout {rollout_id} is {row['status']}; cannot "
                                      f"{action} it")
            now = self._clock()
            with self._store.transaction() as db:
                fields = {"status": status.value, "updated_at": _iso(now),
                          "last_action": action}
                if restart_bake:
                    # the bake clock starts over; what the wave reported still counts
                    fields |= {"bake_started_at": now, "promoted": 0}
                if not status.active:
                    fields["finished_at"] = _iso(now)
                    # the wave's ``assigning`` rows stay: the carrier settles an ended
                    # rollout's leftovers from what the director says (a row signed but
                    # not yet recorded, after a crash or a failed batch, is ``assigned``;
                    # one never signed goes back to ``pending``), and signs nothing new
                    self._end_shadow(db, rollout_id)
                db["rollouts"].update(rollout_id, fields)
                self._log(db, rollout_id, row["wave"], action,
                          reason or f"operator chose to {action}", None, actor)
                self._audit.record(actor, f"rollout.{action}", "rollout", str(rollout_id),
                                   {"status": row["status"]},
                                   {"status": status.value, "reason": reason})
        self._dispatch(rollout_id)
        return self.get(rollout_id)

    @staticmethod
    def _end_shadow(db: Any, rollout_id: int) -> None:
        """Devices running the candidate in shadow, or perhaps signed it (a row whose
        signing a crash or a failed batch left unrecorded), go back to their plain
        assignment: re-signing a device that never got the shadow only adds a version."""
        db.execute("UPDATE rollout_devices SET assign = 'unshadowing' WHERE rollout_id = ?"
                   " AND assign IN ('shadowing', 'shadow')", [rollout_id])

    # -- the scheduler's tick --------------------------------------------------------

    def tick(self) -> None:
        """Evaluate every running rollout once, then carry out pending assignments (here
        when they are few, else in the background; after a restart too)."""
        started = time.perf_counter()
        rows = self._store.db.execute("SELECT id FROM rollouts WHERE status = ? ORDER BY id",
                                      [RolloutStatus.RUNNING.value]).fetchall()
        for (rollout_id,) in rows:
            try:
                self._tick_one(rollout_id)
            except Exception:
                log.exception("rollout %d: tick failed; retried on the next one", rollout_id)
        for rollout_id in self.carrier.rollouts_with_work():
            try:
                self._dispatch(rollout_id)
            except Exception:
                log.exception("rollout %d: carrying out failed; retried on the next tick",
                              rollout_id)
        self._tick_wall.add((time.perf_counter() - started) * 1000.0)

    def _dispatch(self, rollout_id: int) -> None:
        """Hand ``rollout_id``'s pending assignments to the carrier (never under the lock)."""
        self.carrier.dispatch(rollout_id, self._row(rollout_id)["status"])

    def close(self) -> None:
        """Stop background signing (call before the store closes)."""
        self.carrier.close()

    def wait_for_carry_out(self, timeout_s: float | None = None) -> bool:
        """Wait until background signing has nothing left (tests, tools); False on
        timeout."""
        return self.carrier.wait_idle(timeout_s)

    def _tick_one(self, rollout_id: int) -> None:
        """Observe and decide without the lock; apply under it unless an operator (or a
        finished wave's signing) changed the rollout meanwhile."""
        row = self._row(rollout_id)
        if row["status"] != RolloutStatus.RUNNING.value:
            return
        spec = RolloutSpec.from_json(json.loads(row["spec"]))
        started = time.perf_counter()
        now = self._clock()
        scope = self._scope(row, spec)
        state = RolloutState(
            status=RolloutStatus(row["status"]), waves=tuple(json.loads(row["waves"])),
            wave=int(row["wave"]), wave_started_at=float(row["bake_started_at"]),
            bake_s=spec.bake_s, max_extension_s=spec.max_extension_s,
            on_failure=spec.on_failure, promoted=bool(row["promoted"]),
            thresholds=spec.thresholds)
        # Inside the bake time the policy judges only the decisive gates (installs, lost
        # devices): observe just those, and everything only when it decides to act.
        baking = now < state.wave_started_at + state.bake_s and not state.promoted
        if baking:
            decision = decide(state, self._observe(scope, now, installs_only=True), now)
            if decision.action is Action.WAIT:
                self._ticks.setdefault(rollout_id, _Ticks()).add(
                    (time.perf_counter() - started) * 1000.0)
                return
        decision = decide(state, self._observe(scope, now, installs_only=False), now)
        ms = (time.perf_counter() - started) * 1000.0
        self._ticks.setdefault(rollout_id, _Ticks()).add(ms)
        self._full_ticks.setdefault(rollout_id, _Ticks()).add(ms)
        if decision.action in (Action.NONE, Action.WAIT):
            return
        with self.lock:
            fresh = self._row(rollout_id)
            if any(fresh[k] != row[k] for k in _DECIDED_ON):
                return  # decided on a state that is gone: the next tick decides again
            if decision.action in (Action.ADVANCE, Action.COMPLETE) and \
                    self._store.db.execute(
                        "SELECT 1 FROM rollout_devices WHERE rollout_id = ? AND assign ="
                        " 'assigning' LIMIT 1", [rollout_id]).fetchone():
                return  # the current wave is not wholly signed yet
            self._apply(fresh, decision, now)

    def _observe(self, scope: Any, now: float, *, installs_only: bool) -> Any:
        return observe_module.observe(self._store, scope, now, reference=self._references,
                                      window_cache=self._windows,
                                      install_cache=self._installs,
                                      installs_only=installs_only)

    def _scope(self, row: Mapping[str, Any], spec: RolloutSpec) -> Any:
        rows = self._store.db.execute(
            "SELECT device_id, wave, assign FROM rollout_devices WHERE rollout_id = ?",
            [row["id"]]).fetchall()
        current = int(row["wave"])
        return observe_module.RolloutScope(
            model=row["model"], new_version=row["version"], new_target=row["target"],
            old_version=row["from_version"],
            wave_devices=tuple(d for d, w, _ in rows if w == current),
            assigned_devices=tuple(d for d, w, _ in rows if w is not None),
            control_devices=tuple(d for d, w, _ in rows if w is None),
            since=float(row["wave_started_at"]), started=float(row["started_at"]),
            lost_after_s=spec.thresholds.lost_after_s,
            # shadows run on the devices not yet assigned: none left, nothing to judge
            shadow=spec.shadow_rate is not None and any(w is None for _, w, _ in rows))

    def _apply(self, row: Mapping[str, Any], decision: Decision, now: float) -> None:
        rollout_id, wave = int(row["id"]), int(row["wave"])
        gates = _gate_json(decision.gates)
        action = decision.action
        if action in (Action.NONE, Action.WAIT):
            return
        with self._store.transaction() as db:
            fields: dict[str, Any] = {"last_gates": json.dumps(gates), "updated_at": _iso(now),
                                      "last_action": action.value}
            if action is Action.EXTEND:
                if row["last_action"] != Action.EXTEND.value:
                    self._log(db, rollout_id, wave, action.value, decision.reason, gates,
                              SYSTEM)
                db["rollouts"].update(rollout_id, fields)
                return
            if action is Action.ADVANCE:
                assert decision.next_wave == wave + 1, decision
                self._start_wave(db, row, wave + 1, now)
                fields |= {"wave": wave + 1, "wave_started_at": now, "bake_started_at": now,
                           "promoted": 0}
            elif action is Action.COMPLETE:
                fields |= {"status": RolloutStatus.COMPLETED.value, "finished_at": _iso(now)}
                self._end_shadow(db, rollout_id)
            elif action is Action.PAUSE:
                fields |= {"status": RolloutStatus.PAUSED.value}
            db["rollouts"].update(rollout_id, fields)
            if action is Action.ROLLBACK:
                self._start_rollback(dict(row), decision.reason, gates, SYSTEM)
            else:
                self._log(db, rollout_id, wave, action.value, decision.reason, gates, SYSTEM)
                self._audit.record(SYSTEM, f"rollout.{action.value}", "rollout",
                                   str(rollout_id), {"wave": wave, "status": row["status"]},
                                   {"wave": fields.get("wave", wave),
                                    "status": fields.get("status", row["status"]),
                                    "reason": decision.reason, "gates": gates})
        log.info("rollout %d wave %d: %s (%s)", rollout_id, wave, action.value,
                 decision.reason)

    @staticmethod
    def _start_wave(db: Any, row: Mapping[str, Any], wave: int, now: float) -> None:
        """Mark the next wave's devices ``assigning`` (one statement; what they run now is
        recorded by the carrier just before it signs them)."""
        waves = json.loads(row["waves"])
        db.execute("UPDATE rollout_devices SET wave = ?, assign = 'assigning' WHERE"
                   " rollout_id = ? AND position >= ? AND position < ?",
                   [wave, row["id"], waves[wave - 1], waves[wave]])

    def _start_rollback(self, row: Mapping[str, Any], reason: str,
                        gates: list[dict[str, Any]] | None, actor: Actor) -> None:
        now = self._clock()
        with self._store.transaction() as db:
            db.execute("UPDATE rollout_devices SET assign = 'reverting' WHERE rollout_id = ?"
                       " AND assign IN ('assigning', 'assigned')", [row["id"]])
            self._end_shadow(db, row["id"])
            db["rollouts"].update(row["id"], {
                "status": RolloutStatus.ROLLED_BACK.value, "finished_at": _iso(now),
                "updated_at": _iso(now), "last_action": Action.ROLLBACK.value})
            self._log(db, row["id"], row["wave"], Action.ROLLBACK.value, reason, gates, actor)
            self._audit.record(actor, "rollout.rollback", "rollout", str(row["id"]),
                               {"status": row["status"], "wave": row["wave"]},
                               {"status": RolloutStatus.ROLLED_BACK.value, "reason": reason,
                                "gates": gates})

    # -- side effects: desired hints (director assignments: ``carry``) ---------------

    def hint(self, device_id: str, model: str, target: str, version: str, *,
             rollout: int | None, shadow: dict[str, Any] | None = None) -> None:
        """Publish the retained ``desired`` hint for ``device_id`` (best effort)."""
        publish = self._publish()
        if publish is None:
            return
        from edgefleet.agent.telemetry.envelope import Channel, Envelope, encode, topic

        now = self._clock()
        body = {"model": model, "version": version, "target": target,
                "rollout": rollout, "shadow": shadow}
        payload = encode(Envelope(type=Channel.DESIRED, device=device_id, bd=0,
                                  seq=int(now * 1000), ts=now, historical=False, body=body))
        try:
            if not publish(topic(device_id, Channel.DESIRED), payload, True):
                log.debug("desired hint for %s not sent (broker not connected)", device_id)
        except Exception:  # a hint is best effort: the signed assignment is what counts
            log.exception("desired hint for %s failed", device_id)

    def _log(self, db: Any, rollout_id: int, wave: int, action: str,  # noqa: PLR0917
             reason: str, gates: list[dict[str, Any]] | None, actor: Actor) -> None:
        db["rollout_decisions"].insert({
            "rollout_id": rollout_id, "ts": self._clock(), "wave": wave, "action": action,
            "reason": reason, "gates": None if gates is None else json.dumps(gates),
            "actor": _actor_ref(actor)})


def rollout_service(services: Services) -> RolloutService:
    """The app's RolloutService, created on first use (kept in ``services.extras``)."""
    cached = services.extras.get(EXTRAS_KEY)
    if isinstance(cached, RolloutService):
        return cached
    from edgefleet.fleet_server.registry.api import registry_service
    from edgefleet.fleet_server.updates import updates_repository

    service = RolloutService(
        services.store, services.audit,
        repository=lambda: updates_repository(services),
        registry=lambda: registry_service(services),
        publish=lambda: services.extras.get(PUBLISH_KEY))
    services.extras[EXTRAS_KEY] = service
    return service
