"""FlJobService: federated jobs in the database, run one at a time by a worker thread.

``create`` validates (model and base version in the registry, a trainable ONNX base, the
hold-out set, a cohort with enough devices whose Flower node is registered), persists the
job as ``queued`` and hands it to the worker. The worker (``runner.JobRunner``) does the
Flower runs, the evaluation and the registration. Jobs run one after another: they share
the one SuperLink and the devices' SuperNodes.

``tick`` (a scheduled job) starts the next run of interval schedules (``every_s``) and of
drift-triggered jobs (``on_drift``: a fleet-drift alert opened for the model after the
job ended), and re-queues jobs a server restart interrupted (they resume from their last
checkpoint).

Flower nodes: ``register_node`` (operator, on a device's behalf), ``register_device_node``
(the device itself, ``POST /device/fl-node``: idempotent, a new key replaces the old node)
and ``forget_device`` (decommission: the node is unregistered at the SuperLink and its
row deleted). Whenever the SuperLink starts, nodes it lists as active without an
``fl_nodes`` row (a decommission while it was not running) are unregistered.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.fleet_server.audit import Actor
from edgefleet.fleet_server.fljobs.errors import (
    FederationUnavailable,
    JobConflict,
    JobInvalid,
    JobNotFound,
)
from edgefleet.fleet_server.fljobs.evaluate import load_holdout
from edgefleet.fleet_server.fljobs.federation import FederationManager
from edgefleet.fleet_server.fljobs.spec import (
    JobSpec,
    JobStatus,
    ModelShape,
    canary_spec,
    parse_spec,
)
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.errors import NotFoundError
from edgefleet.fleet_server.rollouts.errors import RolloutInvalid
from edgefleet.fleet_server.rollouts.service import select_devices
from edgefleet.fleet_server.rollouts.spec import TargetSelector
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import utcnow

logger = logging.getLogger(__name__)

EXTRAS_KEY = "fljobs"
#: ``services.extras`` flag: False keeps created jobs queued (tests of the API alone).
AUTORUN_KEY = "fljobs.autorun"
TICK_INTERVAL_S = 30.0
_JSON_COLUMNS = ("spec", "cohort", "run_ids", "result")


def _actor_ref(actor: Actor) -> str:
    return f"{actor.kind.value}:{actor.name}"


class FlJobService:
    """Business operations of federated jobs (see module docstring)."""

    def __init__(self, services: Services, *, autorun: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.services = services
        self.store = services.store
        self.work_dir = services.config.data_dir / "fljobs"
        self.federation = FederationManager(services.config.data_dir / "federation",
                                            on_start=self._reconcile_nodes)
        self._nodes_lock = threading.Lock()  # node registrations, one at a time
        self.autorun = autorun
        self.clock = clock
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._recovered = False

    # -- reads -------------------------------------------------------------------------

    def get(self, job_id: int, *, with_rounds: bool = True) -> dict[str, Any]:
        """One job, with its rounds. Raises JobNotFound."""
        rows = list(self.store.db["fl_jobs"].rows_where("id = ?", [job_id]))
        if not rows:
            raise JobNotFound(f"no federated job {job_id}")
        job = _decode(rows[0])
        if with_rounds:
            job["rounds"] = self.rounds(job_id)
        return job

    def rounds(self, job_id: int) -> list[dict[str, Any]]:
        """Per-round metrics of a job, by round."""
        rows = self.store.db["fl_rounds"].rows_where("job_id = ?", [job_id], order_by="round")
        out = []
        for row in rows:
            record = json.loads(row.pop("record"))
            row["run_id"] = int(row["run_id"])
            row["participating_nodes"] = json.loads(row["participating_nodes"])
            row["failed_nodes"] = json.loads(row["failed_nodes"])
            row["train_metrics"] = record.get("train_metrics", {})
            row["evaluate_metrics"] = record.get("evaluate_metrics", {})
            row["skipped_nodes"] = record.get("skipped_nodes", [])
            row["dp"] = record.get("dp")
            out.append(row)
        return out

    def list_jobs(self, *, status: str | None = None, model: str | None = None,
                  limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Jobs, newest first, without their rounds."""
        where, args = ["1 = 1"], []
        if status:
            where.append("status = ?")
            args.append(status)
        if model:
            where.append("model = ?")
            args.append(model)
        clause = " AND ".join(where)
        table = self.store.db["fl_jobs"]
        total = table.count_where(clause, args)
        rows = table.rows_where(clause, args, order_by="id DESC", limit=limit, offset=offset)
        return [_decode(r) for r in rows], total

    def node_devices(self) -> dict[int, str]:
        """Flower node id -> device id of every registered node."""
        rows = self.store.db.execute("SELECT node_id, device_id FROM fl_nodes").fetchall()
        return {int(r[0]): str(r[1]) for r in rows}

    # -- writes ------------------------------------------------------------------------

    def create(self, body: dict[str, Any], actor: Actor, *, scheduled_from: int | None = None,
               trigger: str = "api") -> dict[str, Any]:
        """Validate and persist a job, then queue it.

        Raises:
            JobInvalid: inconsistent spec (cohort, canary), unusable base model or
                hold-out set.
            JobNotFound: unknown model, base version or listed device (cohort or canary
                target), or no device matches.
            JobConflict: fewer devices with a registered Flower node than ``min_nodes``.
        """
        spec = parse_spec(body)
        base_path = self._base_artifact(spec)
        shape = model_shape(base_path.read_bytes())
        load_holdout(Path(spec.holdout), shape.n_features)
        if spec.new_version is not None:
            self._refuse_existing_version(spec.model, spec.new_version)
        cohort = self._cohort(spec)
        if spec.canary is not None:
            self._check_canary_target(spec)
        now = utcnow()
        with self.store.transaction() as db:
            row = {
                "model": spec.model, "base_version": spec.base_version,
                "spec": json.dumps(spec.to_json()), "cohort": json.dumps(cohort),
                "status": JobStatus.QUEUED.value, "phase": "queued",
                "scheduled_from": scheduled_from, "trigger": trigger,
                "created_by": _actor_ref(actor),
                "created_at": now, "updated_at": now,
            }
            job_id = int(db["fl_jobs"].insert(row).last_pk)
            self.services.audit.record(actor, "fljob.create", "fl_job", str(job_id), None,
                                       {**row, "id": job_id})
        logger.info("federated job %d created: %s@%s on %d device(s)", job_id, spec.model,
                    spec.base_version, len(cohort))
        self.enqueue(job_id)
        return self.get(job_id)

    def cancel(self, job_id: int, actor: Actor) -> dict[str, Any]:
        """Cancel a queued or running job (a running Flower run is stopped).

        Raises:
            JobNotFound: no such job.
            JobConflict: the job already ended.
        """
        with self.store.transaction():
            job = self.get(job_id, with_rounds=False)
            if JobStatus(job["status"]).final:
                raise JobConflict(f"job {job_id} already ended ({job['status']})")
            self._update(job_id, status=JobStatus.CANCELLED.value, phase="cancelled",
                         finished_at=utcnow(), error="cancelled by an operator")
            self.services.audit.record(actor, "fljob.cancel", "fl_job", str(job_id),
                                       {"status": job["status"]}, {"status": "cancelled"})
        with self._lock:
            event = self._cancel.get(job_id)
        if event is not None:
            event.set()
        return self.get(job_id)

    def register_node(self, device_id: str, public_key_pem: str, actor: Actor) -> dict[str, Any]:
        """Register a device's SuperNode public key on the SuperLink.

        Raises:
            JobNotFound: unknown or decommissioned device.
            JobInvalid: not a PEM public key.
            JobConflict: the device already has a node, or the SuperLink refused the key.
            FederationUnavailable: the SuperLink cannot be started.
        """
        _check_public_key(public_key_pem)
        db = self.store.db
        if not db.execute("SELECT 1 FROM devices WHERE id = ? AND status = 'active'",
                          [device_id]).fetchall():
            raise JobNotFound(f"no active device {device_id!r}")
        if list(db["fl_nodes"].rows_where("device_id = ?", [device_id])):
            raise JobConflict(f"device {device_id!r} already has a registered Flower node")
        node_id = self.federation.register_node(public_key_pem.encode())
        row = {"device_id": device_id, "node_id": str(node_id),
               "public_key_pem": public_key_pem, "registered_at": utcnow(),
               "registered_by": _actor_ref(actor)}
        with self.store.transaction() as tx:
            tx["fl_nodes"].insert(row)
            self.services.audit.record(actor, "fljob.node.register", "device", device_id,
                                       None, {"node_id": str(node_id)})
        return {**row, "node_id": node_id, **self.federation.join_info()}

    def register_device_node(self, device_id: str, public_key_pem: str,
                             actor: Actor) -> tuple[dict[str, Any], bool]:
        """Register (or keep, or replace) the calling device's SuperNode key; the join
        information and whether a node was registered (False: the same key already was).

        A different key for the device unregisters its old node at the SuperLink first.

        Raises:
            JobNotFound: unknown or decommissioned device.
            JobInvalid: not a PEM EC P-384 public key.
            JobConflict: the SuperLink refused the key (for example in use by another node).
            FederationUnavailable: the SuperLink cannot be started.
        """
        pem = canonical_node_key(public_key_pem)
        db = self.store.db
        with self._nodes_lock:
            if not db.execute("SELECT 1 FROM devices WHERE id = ? AND status = 'active'",
                              [device_id]).fetchall():
                raise JobNotFound(f"no active device {device_id!r}")
            rows = list(db["fl_nodes"].rows_where("device_id = ?", [device_id]))
            old = rows[0] if rows else None
            if old is not None and _same_key(old["public_key_pem"], pem):
                return {**_node_view(old), **self.federation.join_info()}, False
            if old is not None:
                self.federation.unregister_node(int(old["node_id"]))
            node_id = self.federation.register_node(pem.encode())
            row = {"device_id": device_id, "node_id": str(node_id), "public_key_pem": pem,
                   "registered_at": utcnow(), "registered_by": _actor_ref(actor)}
            with self.store.transaction() as tx:
                tx.execute("DELETE FROM fl_nodes WHERE device_id = ?", [device_id])
                tx["fl_nodes"].insert(row)
                self.services.audit.record(
                    actor, "fljob.node.replace" if old else "fljob.node.register", "device",
                    device_id, None if old is None else {"node_id": old["node_id"]},
                    {"node_id": str(node_id)})
        logger.info("device %s registered Flower node %s%s", device_id, node_id,
                    "" if old is None else f" (replacing node {old['node_id']})")
        return {**_node_view(row), **self.federation.join_info()}, True

    def forget_device(self, device_id: str, actor: Actor) -> None:
        """A decommissioned device: unregister its node at the SuperLink (when running;
        otherwise when it next starts, see ``_reconcile_nodes``) and delete its row."""
        with self._nodes_lock:
            rows = list(self.store.db["fl_nodes"].rows_where("device_id = ?", [device_id]))
            if not rows:
                return
            node_id = int(rows[0]["node_id"])
            unregistered = False
            if self.federation.started:
                try:
                    unregistered = self.federation.unregister_node(node_id)
                except FederationUnavailable as e:
                    logger.warning("node %s of device %s not unregistered now (%s); it "
                                   "will be at the next SuperLink start", node_id,
                                   device_id, e)
            with self.store.transaction() as tx:
                tx.execute("DELETE FROM fl_nodes WHERE device_id = ?", [device_id])
                self.services.audit.record(actor, "fljob.node.unregister", "device",
                                           device_id, {"node_id": str(node_id)},
                                           {"superlink_unregistered": unregistered})
        logger.info("Flower node %s of decommissioned device %s removed", node_id, device_id)

    def _reconcile_nodes(self, federation: Any) -> None:
        """On SuperLink start: unregister active nodes no ``fl_nodes`` row holds."""
        from edgefleet.fleet_server.fljobs.federation import unregister_node

        known = set(self.node_devices())
        with federation.superlink.control() as control:
            nodes = control.list_nodes()
        for node in nodes:
            if node.status != "unregistered" and node.node_id not in known:
                logger.info("unregistering Flower node %s: no device holds it", node.node_id)
                unregister_node(federation, node.node_id)

    # -- scheduling --------------------------------------------------------------------

    def tick(self) -> list[int]:
        """Start due re-runs (interval schedules, drift alerts) and re-queue jobs a
        restart interrupted; the new job ids."""
        self.recover()
        now = self.clock()
        rows = self.store.db.execute(
            "SELECT id, model, next_run_at, drift_watermark FROM fl_jobs"
            " WHERE next_job_id IS NULL AND status IN (?, ?, ?)"
            " AND (next_run_at IS NOT NULL OR drift_watermark IS NOT NULL) ORDER BY id",
            [JobStatus.SUCCEEDED.value, JobStatus.REJECTED.value,
             JobStatus.FAILED.value]).fetchall()
        started = []
        for job_id, model, next_run_at, watermark in rows:
            trigger, alert = None, None
            if next_run_at is not None and next_run_at <= now:
                trigger = "schedule"
            elif watermark is not None:
                alert = self.newest_drift_alert(model)
                if alert is not None and alert > watermark:
                    trigger = f"drift:{alert}"
            if trigger is not None:
                new_id = self._rerun(int(job_id), trigger, now, alert)
                if new_id is not None:
                    started.append(new_id)
        return started

    def newest_drift_alert(self, model: str) -> int:
        """Id of the newest fleet-drift alert of ``model`` (0: none, or no fleetdrift)."""
        try:
            row = self.store.db.execute(
                "SELECT MAX(id) FROM fleetdrift_alerts WHERE model = ?", [model]).fetchone()
        except sqlite3.OperationalError:  # the fleetdrift feature is not installed
            return 0
        return int(row[0] or 0)

    def _rerun(self, job_id: int, trigger: str, now: float, alert: int | None) -> int | None:
        from edgefleet.fleet_server.audit import SYSTEM

        spec = dict(self.get(job_id, with_rounds=False)["spec"])
        spec.pop("new_version", None)  # each run registers its own version
        try:
            new = self.create(spec, SYSTEM, scheduled_from=job_id, trigger=trigger)
        except (JobInvalid, JobNotFound, JobConflict) as e:
            logger.warning("re-run (%s) of federated job %s not started: %s", trigger,
                           job_id, e)
            if alert is not None:  # do not retry this alert every tick
                self._update(job_id, drift_watermark=alert)
            else:
                self._update(job_id, next_run_at=now + float(spec["every_s"]))
            return None
        self._update(job_id, next_job_id=new["id"])
        logger.info("federated job %s re-run as job %s (%s)", job_id, new["id"], trigger)
        return int(new["id"])

    def recover(self) -> None:
        """Once per service: queue the jobs a restart left queued or running, and start
        the SuperLink (in the background) when devices have registered nodes, so their
        SuperNodes reconnect to it without waiting for the next job or join."""
        with self._lock:
            if self._recovered:
                return
            self._recovered = True
        rows = self.store.db.execute(
            "SELECT id FROM fl_jobs WHERE status IN (?, ?) ORDER BY id",
            [JobStatus.QUEUED.value, JobStatus.RUNNING.value]).fetchall()
        for (job_id,) in rows:
            self.enqueue(int(job_id))
        registered = self.store.db.execute("SELECT 1 FROM fl_nodes LIMIT 1").fetchone()
        if registered is not None and not self.federation.started:
            threading.Thread(target=self._start_federation, name="fljobs-superlink",
                             daemon=True).start()

    def _start_federation(self) -> None:
        try:
            self.federation.federation()
        except FederationUnavailable as e:
            logger.warning("the SuperLink did not start for the registered devices: %s", e)

    # -- the worker --------------------------------------------------------------------

    def enqueue(self, job_id: int) -> None:
        """Hand a job to the worker (no-op when ``autorun`` is off)."""
        if not self.autorun:
            return
        with self._lock:
            self._cancel.setdefault(job_id, threading.Event())
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="fljobs-worker",
                                                daemon=True)
                self._worker.start()
        self._queue.put(job_id)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until the worker has nothing left to do; False on timeout (tests, CLI)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.2)
        return False

    def _work(self) -> None:
        from edgefleet.fleet_server.fljobs.runner import JobRunner

        while True:
            job_id = self._queue.get()
            try:
                if job_id is None:
                    return
                with self._lock:
                    cancel = self._cancel.setdefault(job_id, threading.Event())
                JobRunner(self, job_id, cancel).run()
            except Exception:  # the worker must survive any one job
                logger.exception("federated job %s crashed the runner", job_id)
            finally:
                if job_id is not None:
                    with self._lock:
                        self._cancel.pop(job_id, None)
                self._queue.task_done()

    def close(self) -> None:
        """Stop the worker (after its current job) and the SuperLink."""
        with self._lock:
            worker, self._worker = self._worker, None
            events = list(self._cancel.values())
        for event in events:
            event.set()
        if worker is not None:
            self._queue.put(None)
            worker.join(timeout=60)
        self.federation.stop()

    # -- helpers used by the runner ----------------------------------------------------

    def update(self, job_id: int, **fields: Any) -> None:
        """Set columns of a job (JSON columns are encoded)."""
        self._update(job_id, **fields)

    def _update(self, job_id: int, **fields: Any) -> None:
        values = {k: (json.dumps(v) if k in _JSON_COLUMNS else v) for k, v in fields.items()}
        values["updated_at"] = utcnow()
        self.store.db["fl_jobs"].update(job_id, values)

    def _base_artifact(self, spec: JobSpec) -> Path:
        registry = registry_service(self.services)
        try:
            record = registry.get_version(spec.model, spec.base_version)
            path = registry.artifact_path(spec.model, spec.base_version)
        except NotFoundError as e:
            raise JobNotFound(str(e)) from e
        if record["framework"] != "onnx":
            raise JobInvalid(f"{spec.model}@{spec.base_version} is {record['framework']}; "
                             "federated training needs an ONNX base version")
        return path

    def _refuse_existing_version(self, model: str, version: str) -> None:
        try:
            registry_service(self.services).get_version(model, version)
        except NotFoundError:
            return
        raise JobConflict(f"{model}@{version} is already registered")

    def _check_canary_target(self, spec: JobSpec) -> None:
        """The canary's target must select active devices now (it is resolved again when
        the rollout is created)."""
        target = canary_spec(spec, spec.base_version).target
        try:
            select_devices(self.store.db, target, seed="fljobs-canary")
        except RolloutInvalid as e:
            raise JobNotFound(f"canary target: {e}") from e

    def _cohort(self, spec: JobSpec) -> list[str]:
        sel = TargetSelector(group=spec.cohort.group, tags=spec.cohort.tags,
                             devices=spec.cohort.devices)
        try:
            devices = select_devices(self.store.db, sel, seed="fljobs")
        except RolloutInvalid as e:
            raise JobNotFound(str(e)) from e
        registered = set(self.node_devices().values())
        offline = {r[0] for r in self.store.db.execute(
            "SELECT device_id FROM ingest_presence WHERE state = 'offline'").fetchall()}
        eligible = sorted(d for d in devices if d in registered and d not in offline)
        if len(eligible) < spec.min_nodes:
            raise JobConflict(
                f"only {len(eligible)} of the {len(devices)} matching device(s) have a "
                f"registered Flower node and are not reported offline; min_nodes is "
                f"{spec.min_nodes}")
        return eligible


def model_shape(onnx_bytes: bytes) -> ModelShape:
    """Family and sizes of a trainable edgefleet graph.

    Raises:
        JobInvalid: the graph was not built by ``edgefleet.federated.models``.
    """
    from edgefleet.federated.models import ModelError, from_onnx

    try:
        model = from_onnx(onnx_bytes)
    except ModelError as e:
        raise JobInvalid(f"the base version is not a trainable edgefleet model: {e}") from e
    weights = model.weights()
    hidden = int(weights["hidden.bias"].shape[0]) if "hidden.bias" in weights else 32
    return ModelShape(model.family, model.n_features, model.n_classes, hidden)


def _check_public_key(pem: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as e:
        raise JobInvalid("public_key must be a PEM SubjectPublicKeyInfo") from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise JobInvalid("public_key must be an EC key (Flower SuperNode authentication)")


#: Upper bound of a node key PEM (a P-384 SubjectPublicKeyInfo PEM is 215 characters).
MAX_NODE_KEY_PEM = 1024


def canonical_node_key(pem: str) -> str:
    """The canonical PEM SubjectPublicKeyInfo of a SuperNode key, which must be EC P-384
    (the only key ``flower-supernode`` 1.41 authenticates with).

    Raises:
        JobInvalid: too long, not exactly one PEM public key, or not EC P-384.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    text = pem.replace("\r\n", "\n").strip()
    if len(text) > MAX_NODE_KEY_PEM:
        raise JobInvalid(f"public_key is longer than {MAX_NODE_KEY_PEM} characters")
    if not (text.startswith("-----BEGIN PUBLIC KEY-----\n")
            and text.endswith("\n-----END PUBLIC KEY-----")
            and text.count("-----BEGIN") == 1):
        raise JobInvalid("public_key must be one PEM SubjectPublicKeyInfo "
                         "(-----BEGIN PUBLIC KEY-----)")
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeError) as e:
        raise JobInvalid("public_key must be a PEM SubjectPublicKeyInfo") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                        ec.SECP384R1):
        raise JobInvalid("public_key must be an EC P-384 key (Flower SuperNode "
                         "authentication)")
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _same_key(stored: str, canonical: str) -> bool:
    # Rows written by POST /fl/nodes hold the PEM as the operator sent it.
    try:
        return canonical_node_key(stored) == canonical
    except JobInvalid:
        return False


def _node_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"device_id": row["device_id"], "node_id": int(row["node_id"]),
            "registered_at": row["registered_at"]}


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out


def fljob_service(services: Services) -> FlJobService:
    """The app's FlJobService, created once and kept in ``services.extras``."""
    existing = services.extras.get(EXTRAS_KEY)
    if isinstance(existing, FlJobService):
        return existing
    svc = FlJobService(services, autorun=bool(services.extras.get(AUTORUN_KEY, True)))
    services.extras[EXTRAS_KEY] = svc
    return svc
