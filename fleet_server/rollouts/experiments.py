"""A/B tests: two released versions on two randomized arms of devices, compared on one
metric with a significance test and a minimum sample size.

Creating an experiment splits the target devices into arms (``waves.split_ab``) and
gives each device its arm's version through the signed director (a retained ``desired``
hint beside it). The comparison is computed on request from what devices reported:

* ``accuracy``: pooled feedback labels per arm, two-proportion z-test (higher is better);
* ``latency_p95``: each device's p95 latency of its arm's version, Welch's t-test (lower
  is better; the samples are devices);
* ``output``: merged output histograms per arm on the reference bins, chi-square test of
  homogeneity (no winner: it says whether the versions predict differently).

Stopping an experiment frees its devices; they keep their version until a rollout moves
them (the usual next step: roll the winner out).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from edgefleet.fleet_server.audit import Actor
from edgefleet.fleet_server.rollouts import abstats
from edgefleet.fleet_server.rollouts.carry import BATCH_SIZE
from edgefleet.fleet_server.rollouts.errors import (
    RolloutConflict,
    RolloutInvalid,
    RolloutNotFound,
)
from edgefleet.fleet_server.rollouts.observe import output_counts
from edgefleet.fleet_server.rollouts.service import (
    RolloutService,
    busy_devices,
    select_devices,
)
from edgefleet.fleet_server.rollouts.spec import TargetSelector
from edgefleet.fleet_server.rollouts.waves import split_ab
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

METRICS = ("accuracy", "latency_p95", "output")
_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_VERSION = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"}
CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "a", "b", "target", "metric"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 128},
        "model": _NAME,
        "a": {**_VERSION, "description": "version of arm A (the control)"},
        "b": {**_VERSION, "description": "version of arm B (the challenger)"},
        "target": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "group": _NAME,
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 64},
                         "maxItems": 32},
                "devices": {"type": "array", "items": _NAME, "minItems": 2,
                            "maxItems": 10_000},
                "percent": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                            "maximum": 100},
            },
        },
        "share_a": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": True,
                    "exclusiveMaximum": True},
        "metric": {"type": "string", "enum": list(METRICS)},
        "min_samples": {"type": "integer", "minimum": 2, "maximum": 10_000_000,
                        "description": "per arm: labels (accuracy), devices (latency), "
                                       "predictions (output)"},
        "alpha": {"type": "number", "minimum": 0, "maximum": 0.5, "exclusiveMinimum": True},
    },
}


def _selector(target: Mapping[str, Any]) -> TargetSelector:
    devices = tuple(target.get("devices", ()))
    if devices and (target.get("group") or target.get("tags")):
        raise RolloutInvalid("target: list devices, or select by group/tags, not both")
    if not devices and not target.get("group") and not target.get("tags"):
        raise RolloutInvalid("target: give a group, tags or a list of devices")
    return TargetSelector(target.get("group"), tuple(sorted(set(target.get("tags", ())))),
                          devices, float(target.get("percent", 100.0)))


class ExperimentService:
    """Creates, stops and evaluates A/B experiments (shares the rollouts' lock and store)."""

    def __init__(self, rollouts: RolloutService, store: Store, audit: Any, *,
                 repository: Callable[[], Any],
                 clock: Callable[[], float] = time.time) -> None:
        self._rollouts = rollouts
        self._store = store
        self._audit = audit
        self._repository = repository
        self._clock = clock

    def create(self, body: Mapping[str, Any], actor: Actor) -> dict[str, Any]:
        """Split the target devices into arms and assign each arm its version.

        Raises:
            RolloutInvalid: unknown versions or devices, fewer than two devices, A == B.
            RolloutConflict: a release not published, or a device already busy.
        """
        model, a, b = body["model"], body["a"], body["b"]
        if a == b:
            raise RolloutInvalid("arms A and B must run different versions")
        targets = {"a": self._rollouts.release_target(model, a),
                   "b": self._rollouts.release_target(model, b)}
        seed = f"ab:{model}:{a}:{b}:{self._clock()!r}"
        settings = {"share_a": float(body.get("share_a", 0.5)),
                    "min_samples": int(body.get("min_samples", 100)),
                    "alpha": float(body.get("alpha", 0.05)), "target": body["target"]}
        devices = select_devices(self._store.db, _selector(body["target"]), seed)
        try:
            arm_a, arm_b = split_ab(devices, seed, settings["share_a"])
        except ValueError as e:
            raise RolloutInvalid(f"an A/B test needs at least two devices: {e}") from e
        with self._rollouts.lock:
            # read under the lock, with the busy check (see RolloutService.create)
            previous = self._repository().assigned_targets(devices)
            now = self._clock()
            with self._store.transaction() as db:
                busy = busy_devices(db, devices)
                if busy:
                    raise RolloutConflict(f"{len(busy)} device(s) already in an active "
                                          f"rollout or experiment: {', '.join(busy[:5])}")
                experiment_id = int(db["experiments"].insert({
                    "name": body.get("name") or f"{model} {a} vs {b}", "model": model,
                    "version_a": a, "version_b": b, "target_a": targets["a"],
                    "target_b": targets["b"], "metric": body["metric"],
                    "spec": json.dumps(settings), "status": "running", "seed": seed,
                    "started_at": now, "created_by": f"{actor.kind.value}:{actor.name}",
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now)),
                }).last_pk)
                db["experiment_devices"].insert_all(
                    ({"experiment_id": experiment_id, "device_id": d, "arm": arm,
                      "assign": "assigning",
                      "previous_target": previous[d]}
                     for arm, members in (("a", arm_a), ("b", arm_b)) for d in members),
                    batch_size=500)
                self._audit.record(actor, "experiment.create", "experiment",
                                   str(experiment_id), None,
                                   {**settings, "model": model, "a": a, "b": b,
                                    "metric": body["metric"], "devices_a": len(arm_a),
                                    "devices_b": len(arm_b)})
        self.carry_out(experiment_id)  # outside the lock: signing takes a while
        log.info("experiment %d: %s %s (%d devices) vs %s (%d devices) on %s", experiment_id,
                 model, a, len(arm_a), b, len(arm_b), body["metric"])
        return self.get(experiment_id)

    def carry_out(self, experiment_id: int) -> None:
        """Sign the director assignments still marked ``assigning`` (after a crash too), in
        batches, without holding the rollouts lock (nothing else changes these rows; an
        assignment signed twice only gets a new version)."""
        from edgefleet.fleet_server.updates.repository import Assignment

        row = self._row(experiment_id)
        repo = self._repository()
        todo = self._store.db.execute(
            "SELECT device_id, arm FROM experiment_devices WHERE experiment_id = ? AND"
            " assign = 'assigning'", [experiment_id]).fetchall()
        for start in range(0, len(todo), BATCH_SIZE):
            batch = todo[start:start + BATCH_SIZE]
            repo.assign_many([Assignment(d, row[f"target_{arm}"]) for d, arm in batch])
            for device_id, arm in batch:
                self._rollouts.hint(device_id, row["model"], row[f"target_{arm}"],
                                    row[f"version_{arm}"], rollout=None)
            with self._rollouts.lock, self._store.transaction() as db:
                db.conn.executemany(
                    "UPDATE experiment_devices SET assign = 'assigned' WHERE"
                    " experiment_id = ? AND device_id = ?",
                    [(experiment_id, d) for d, _ in batch])

    def pending_work(self) -> list[int]:
        """Experiments with assignments a crash interrupted."""
        rows = self._store.db.execute(
            "SELECT DISTINCT experiment_id FROM experiment_devices WHERE assign = 'assigning'"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def _row(self, experiment_id: int) -> dict[str, Any]:
        rows = list(self._store.db["experiments"].rows_where("id = ?", [experiment_id]))
        if not rows:
            raise RolloutNotFound(f"no experiment {experiment_id}")
        return rows[0]

    def stop(self, experiment_id: int, actor: Actor, reason: str = "") -> dict[str, Any]:
        """End the experiment; its devices keep their version and are free again."""
        with self._rollouts.lock:
            row = self._row(experiment_id)
            if row["status"] != "running":
                raise RolloutConflict(f"experiment {experiment_id} is already stopped")
            with self._store.transaction() as db:
                db["experiments"].update(experiment_id, {
                    "status": "stopped",
                    "stopped_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())})
                self._audit.record(actor, "experiment.stop", "experiment",
                                   str(experiment_id), {"status": "running"},
                                   {"status": "stopped", "reason": reason,
                                    "result": self._result(row)})
            return self.get(experiment_id)

    def list_experiments(self, *, limit: int = 50, offset: int = 0
                         ) -> tuple[list[dict[str, Any]], int]:
        table = self._store.db["experiments"]
        rows = table.rows_where(order_by="id DESC", limit=limit, offset=offset)
        return [self._summary(r) for r in rows], table.count

    @staticmethod
    def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("id", "name", "model", "version_a", "version_b",
                                    "metric", "status", "created_by", "created_at",
                                    "stopped_at")}

    def get(self, experiment_id: int) -> dict[str, Any]:
        """The experiment, its arms and the comparison as of now."""
        row = self._row(experiment_id)
        return {**self._summary(row), "settings": json.loads(row["spec"]),
                **self._result(row)}

    # -- the comparison ----------------------------------------------------------------

    def _arms(self, experiment_id: int) -> dict[str, list[str]]:
        arms: dict[str, list[str]] = {"a": [], "b": []}
        for device_id, arm in self._store.db.execute(
                "SELECT device_id, arm FROM experiment_devices WHERE experiment_id = ?"
                " ORDER BY device_id", [experiment_id]).fetchall():
            arms[arm].append(device_id)
        return arms

    def _result(self, row: Mapping[str, Any]) -> dict[str, Any]:
        settings = json.loads(row["spec"])
        arms = self._arms(int(row["id"]))
        metric = row["metric"]
        values: dict[str, Any] = {}
        run: Callable[[], abstats.TestResult]
        if metric == "accuracy":
            pooled = {arm: self._labels(row["model"], row[f"version_{arm}"], members)
                      for arm, members in arms.items()}
            (ca, na), (cb, nb) = pooled["a"], pooled["b"]
            values = {"a": ca / na if na else None, "b": cb / nb if nb else None}
            sizes = {"a": na, "b": nb}
            run, higher_is_better = (lambda: abstats.two_proportions(ca, na, cb, nb)), True
        elif metric == "latency_p95":
            samples = {arm: self._p95s(row["model"], row[f"version_{arm}"], members)
                       for arm, members in arms.items()}
            values = {arm: (sum(v) / len(v) if v else None) for arm, v in samples.items()}
            sizes = {arm: len(v) for arm, v in samples.items()}
            run = lambda: abstats.welch_t(samples["a"], samples["b"])  # noqa: E731
            higher_is_better = False
        else:
            counts = {arm: output_counts(self._store, row["model"], row[f"version_{arm}"],
                                         members, float(row["started_at"]))
                      for arm, members in arms.items()}
            values = sizes = {arm: int(sum(c)) for arm, c in counts.items()}
            run = lambda: abstats.chi_square_counts(counts["a"], counts["b"])  # noqa: E731
            higher_is_better = True
        verdict: dict[str, Any]
        test: dict[str, Any] | None = None
        try:
            result = run()
        except ValueError:  # no data on a side yet (or not enough for the test at all)
            verdict = {"winner": None, "confidence": 0.0, "significant": False,
                       "reason": f"{metric}: too few samples to judge (n={sizes['a']:,} vs "
                                 f"{sizes['b']:,}, need {settings['min_samples']:,} per arm)"}
        else:
            test = asdict(result)
            judged = abstats.compare(metric, result, alpha=settings["alpha"],
                                     higher_is_better=higher_is_better,
                                     min_samples=settings["min_samples"])
            verdict = {"winner": judged.winner, "confidence": judged.confidence,
                       "significant": judged.significant, "reason": judged.reason}
        return {
            "arms": {arm: {"version": row[f"version_{arm}"], "devices": len(members),
                           "samples": sizes[arm], "value": values.get(arm)}
                     for arm, members in arms.items()},
            "test": test,
            "verdict": verdict,
        }

    def _labels(self, model: str, version: str, devices: Sequence[str]) -> tuple[int, int]:
        correct, labeled = self._store.db.execute(
            "SELECT COALESCE(SUM(s.correct), 0), COALESCE(SUM(s.labeled), 0)"
            " FROM ingest_model_stats s JOIN json_each(?) j ON j.value = s.device_id"
            " WHERE s.model = ? AND s.version = ?",
            [json.dumps(list(devices)), model, version]).fetchone()
        return int(correct), int(labeled)

    def _p95s(self, model: str, version: str, devices: Sequence[str]) -> list[float]:
        rows = self._store.db.execute(
            "SELECT s.p95_ms FROM ingest_model_stats s JOIN json_each(?) j"
            " ON j.value = s.device_id WHERE s.model = ? AND s.version = ?"
            " AND s.p95_ms IS NOT NULL", [json.dumps(list(devices)), model, version]
        ).fetchall()
        return [float(r[0]) for r in rows]


EXTRAS_KEY = "experiments"


def experiment_service(services: Any) -> ExperimentService:
    """The app's ExperimentService, created on first use (kept in ``services.extras``)."""
    cached = services.extras.get(EXTRAS_KEY)
    if isinstance(cached, ExperimentService):
        return cached
    from edgefleet.fleet_server.rollouts.service import rollout_service
    from edgefleet.fleet_server.updates import updates_repository

    service = ExperimentService(
        rollout_service(services), services.store, services.audit,
        repository=lambda: updates_repository(services))
    services.extras[EXTRAS_KEY] = service
    return service
