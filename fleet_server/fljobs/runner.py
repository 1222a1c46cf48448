"""One federated job from start to end, on the worker thread.

Steps, each recorded in ``fl_jobs.phase``:

1. ``preparing``: the base version's ONNX -> ``from_onnx`` -> initial weights
   (``<job dir>/init.npz``).
2. ``training``: wait until ``min_nodes`` cohort nodes are online, submit the Flower run
   into its own checkpoint directory (``<job dir>/ckpt/attempt-NN``), and while it runs
   put every new round into the registry (a checkpoint: the round's weights in the base
   graph, ONNX, ``registry.checkpoints``) and into ``fl_rounds``. A run that fails (or
   outlives its SuperLink process) is resumed from the job's last **registry**
   checkpoint as a new run (``start-round`` = that round + 1), up to ``max_attempts``.
3. ``evaluating``: the last checkpoint (the trained weights in the base graph); held-out
   accuracy of base and candidate; accept when candidate >= base + margin.
4. ``registering``: the candidate as a new registry version (parent: the base; lineage
   and metrics), then its dynamic-int8 quantization as a child version; then, when the
   spec asks for one, the canary rollout (``canary``).

A job that is resumed after a server restart goes through the same steps; step 2 first
copies the rounds of its last attempt's directory into the registry, then resumes from
the registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.fleet_server.audit import Actor, ActorKind
from edgefleet.fleet_server.fljobs.errors import FederationUnavailable, FlJobError
from edgefleet.fleet_server.fljobs.evaluate import load_holdout, onnx_accuracy, quantize
from edgefleet.fleet_server.fljobs.spec import JobSpec, JobStatus, parse_spec, run_config
from edgefleet.fleet_server.registry.api import checkpoint_service, registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from edgefleet.fleet_server.storage import utcnow

if TYPE_CHECKING:
    from edgefleet.fleet_server.fljobs.service import FlJobService

logger = logging.getLogger(__name__)

POLL_S = 1.0
SUBMIT_SLACK_S = 120.0  # per attempt, beyond the rounds' own timeouts
#: How long a run may go without an answer from the SuperLink (the supervisor restarts a
#: crashed one with backoff, up to 15 s, plus its start-up) before the attempt is failed.
UNREACHABLE_S = 90.0


class Cancelled(Exception):
    """The operator cancelled the job."""


class JobFailed(Exception):
    """The job cannot finish (message recorded in ``fl_jobs.error``)."""


class JobRunner:
    """Runs one job (see module docstring)."""

    def __init__(self, service: FlJobService, job_id: int, cancel: threading.Event) -> None:
        self.svc = service
        self.job_id = job_id
        self.cancel = cancel
        job = service.get(job_id, with_rounds=False)
        self.job = job
        self.spec: JobSpec = parse_spec(job["spec"])
        self.dir = service.work_dir / str(job_id)
        self.ckpt = self.dir / "ckpt"
        #: the training run's name in the registry (checkpoints, lineage)
        self.run_name = f"fljob:{job_id}"
        self.actor = Actor(ActorKind.SYSTEM, self.run_name, self.run_name, "")
        self.base_bytes = b""
        self._synced: dict[int, str] = {}  # round -> registry checkpoint digest
        self._lineage: dict[str, str] = {}  # of the registered float version

    def attempt_dir(self, attempt: int) -> Path:
        """The checkpoint directory of the Flower run of ``attempt`` (1-based)."""
        return self.ckpt / f"attempt-{attempt:02d}"

    def run(self) -> None:
        """Run the job to a final status; never raises."""
        if JobStatus(self.job["status"]).final:
            return
        self.svc.update(self.job_id, status=JobStatus.RUNNING.value, phase="preparing",
                        started_at=self.job["started_at"] or utcnow())
        try:
            base_bytes, shape = self._prepare()
            self._train(shape)
            status, result = self._finish(base_bytes)
        except Cancelled:
            logger.info("federated job %d cancelled", self.job_id)
            return  # cancel() already recorded the status
        except (JobFailed, FlJobError) as e:
            self._end(JobStatus.FAILED, error=str(e))
            return
        except Exception as e:
            logger.exception("federated job %d failed", self.job_id)
            self._end(JobStatus.FAILED, error=f"{type(e).__name__}: {e}")
            return
        self._end(status, result=result, result_version=result.get("version"))

    # -- steps -------------------------------------------------------------------------

    def _prepare(self) -> tuple[bytes, Any]:
        from edgefleet.federated.models import from_onnx
        from edgefleet.fleet_server.fljobs.service import model_shape

        path = registry_service(self.svc.services).artifact_path(self.spec.model,
                                                                 self.spec.base_version)
        base_bytes = path.read_bytes()
        self.base_bytes = base_bytes
        shape = model_shape(base_bytes)
        self.dir.mkdir(parents=True, exist_ok=True)
        init = self.dir / "init.npz"
        if not init.exists():
            weights = from_onnx(base_bytes).weights()
            tmp = self.dir / "init.tmp.npz"
            np.savez(tmp, **weights)
            tmp.replace(init)
        return base_bytes, shape

    def _train(self, shape: Any) -> None:
        from edgefleet.federated.flower.errors import RunError

        runs = list(self.job["run_ids"])
        attempts = int(self.job["attempts"])
        if attempts:  # a restart may have left rounds of the last run unsynced
            self._sync_rounds(attempts)
        last_error = ""
        while True:
            done = self._last_checkpoint_round()
            if done >= self.spec.rounds:
                return
            if attempts >= self.spec.max_attempts:
                raise JobFailed(f"{attempts} Flower run(s) failed; last: {last_error}")
            self._check_cancel()
            self._wait_for_cohort()
            attempts += 1
            # recorded before the run starts: every attempt directory that may hold
            # rounds belongs to a recorded attempt (synced on resume after a restart)
            self.svc.update(self.job_id, attempts=attempts)
            ckpt = self.attempt_dir(attempts)
            if ckpt.exists():  # left by an attempt whose run never started
                shutil.rmtree(ckpt)
            init = self.dir / "init.npz" if done == 0 else self._resume_weights(done)
            cohort = set(self.job["cohort"])
            config = run_config(self.spec, shape, checkpoint_dir=str(ckpt),
                                init_weights=str(init), start_round=done + 1,
                                node_ids=[n for n, d in self.svc.node_devices().items()
                                          if d in cohort])
            try:
                generation = self.svc.federation.generation()
                run_id = self.svc.federation.submit_run(config)
            except (RunError, FederationUnavailable) as e:  # counts as a failed attempt
                last_error = str(e)
                continue
            runs.append(run_id)
            self.svc.update(self.job_id, phase="training", run_ids=runs)
            logger.info("federated job %d: attempt %d is Flower run %d (from round %d)",
                        self.job_id, attempts, run_id, done)
            last_error = self._follow(run_id, attempts, generation)
            self._sync_rounds(attempts)  # the attempt's last rounds; its directory is
            # never read again (a ServerApp that outlived its run cannot add rounds)
            if last_error:
                logger.warning("federated job %d: run %d failed: %s", self.job_id, run_id,
                               last_error)

    def _follow(self, run_id: int, attempt: int, generation: Any) -> str:
        """Poll the run until it ends; '' when it completed, else why it did not.

        A SuperLink process that was replaced meanwhile (``generation`` changed: crashed
        and restarted by the supervisor) ends the run: it is stopped and the job resumes
        from its last checkpoint as a new run. A SuperLink that stays unreachable for
        ``UNREACHABLE_S`` fails the attempt.
        """
        from edgefleet.federated.flower.errors import RunError

        spec = self.spec
        limit_s = (spec.node_wait_s + SUBMIT_SLACK_S
                   + spec.rounds * (2 * spec.round_timeout_s + spec.node_wait_s))
        deadline = time.monotonic() + limit_s
        unreachable_since: float | None = None
        while True:
            if self.cancel.wait(POLL_S):
                self.svc.federation.stop_run(run_id)
                raise Cancelled
            self._sync_rounds(attempt)
            restarted = self.svc.federation.generation() != generation
            try:
                state = self.svc.federation.run_state(run_id)
            except (RunError, FederationUnavailable) as e:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > UNREACHABLE_S:
                    return f"SuperLink unreachable for {UNREACHABLE_S:.0f} s: {e}"
                continue
            unreachable_since = None
            if state.finished:
                return "" if state.succeeded else f"{state.sub_status}: {state.details}"
            if restarted:
                self.svc.federation.stop_run(run_id)
                return "the SuperLink process restarted during the run"
            if time.monotonic() > deadline:
                self.svc.federation.stop_run(run_id)
                return f"still {state.status} after {limit_s:.0f} s"

    def _wait_for_cohort(self) -> None:
        """Block until ``min_nodes`` of the cohort's Flower nodes are online."""
        cohort = set(self.job["cohort"])
        deadline = time.monotonic() + self.spec.node_wait_s
        while True:
            nodes = self.svc.node_devices()
            try:
                online_ids = self.svc.federation.online_node_ids()
            except FederationUnavailable as e:  # restarting: wait like for slow nodes
                logger.info("federated job %d: waiting for the SuperLink: %s", self.job_id, e)
                online_ids = set()
            online = [nodes[n] for n in online_ids if nodes.get(n) in cohort]
            if len(online) >= self.spec.min_nodes:
                return
            if time.monotonic() > deadline:
                raise JobFailed(f"only {len(online)} of min_nodes {self.spec.min_nodes} "
                                f"cohort device(s) online after {self.spec.node_wait_s:.0f} s")
            if self.cancel.wait(POLL_S):
                raise Cancelled

    # -- checkpoints -------------------------------------------------------------------

    def _last_checkpoint_round(self) -> int:
        """The highest round checkpointed in the registry (0: none yet)."""
        latest = checkpoint_service(self.svc.services).latest(self.spec.model,
                                                              self.run_name)
        return 0 if latest is None else int(latest["round"])

    def _resume_weights(self, done: int) -> Path:
        """The weights of the registry checkpoint of round ``done``, as the ``.npz`` the
        next run starts from (digest checked).

        Raises:
            JobFailed: the checkpoint's file is missing or altered.
        """
        from edgefleet.federated.models import from_onnx

        checkpoints = checkpoint_service(self.svc.services)
        record = checkpoints.get(self.spec.model, self.run_name, done)
        data = checkpoints.path(record).read_bytes()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != record["digest"]:
            raise JobFailed(f"registry checkpoint of round {done} does not match its digest")
        path = self.dir / f"resume-r{done:04d}.npz"
        tmp = self.dir / f"resume-r{done:04d}.tmp.npz"
        np.savez(tmp, **from_onnx(data).weights())
        tmp.replace(path)
        return path

    def _sync_rounds(self, attempt: int) -> None:
        """Put the complete rounds of ``attempt``'s directory into the registry (each
        round >= 1 once) and into ``fl_rounds``."""
        from edgefleet.federated.flower.checkpoint import latest_round, list_records

        ckpt = self.attempt_dir(attempt)
        if not ckpt.is_dir():
            return
        last = latest_round(ckpt)
        if last is None:
            return
        rows = []
        for record in list_records(ckpt):
            if record.round > last:  # being written right now
                continue
            if record.round >= 1 and record.round not in self._synced:
                digest = self._checkpoint(ckpt, record)
                if digest is None:  # the registry holds another round of that number
                    continue
                self._synced[record.round] = digest
            data = record.to_json()
            rows.append({
                "job_id": self.job_id, "round": record.round, "run_id": str(record.run_id),
                "status": record.status, "loss": record.loss, "accuracy": record.accuracy,
                "examples": record.examples,
                "participating_nodes": json.dumps(record.participating_nodes),
                "failed_nodes": json.dumps(data["failed_nodes"]),
                "bytes_sent": record.bytes_sent, "bytes_received": record.bytes_received,
                "duration_s": record.duration_s, "record": json.dumps(data),
            })
        if rows:
            with self.svc.store.transaction() as db:
                db["fl_rounds"].insert_all(rows, pk=("job_id", "round"), replace=True)

    def _checkpoint(self, ckpt: Path, record: Any) -> str | None:
        """Register one round (weights written into the base graph) in the registry; its
        digest. A round registered before keeps its record (the registry is the truth:
        None when that record came from another run, which never happens unless a
        ServerApp outlived its run)."""
        from edgefleet.federated.flower.checkpoint import load_weights, weights_path
        from edgefleet.federated.models import write_weights_into
        from edgefleet.fleet_server.registry.checkpoints import CheckpointConflictError
        from edgefleet.fleet_server.registry.errors import NotFoundError

        checkpoints = checkpoint_service(self.svc.services)
        try:
            existing = checkpoints.get(self.spec.model, self.run_name, record.round)
        except NotFoundError:
            existing = None
        if existing is not None:
            if existing["lineage"].get("flower_run") == str(record.run_id):
                return str(existing["digest"])
            logger.warning("federated job %d: round %d of run %s ignored: the registry "
                           "holds it from run %s", self.job_id, record.round,
                           record.run_id, existing["lineage"].get("flower_run"))
            return None
        weights = load_weights(weights_path(ckpt, record.round))
        onnx_bytes = write_weights_into(self.base_bytes, weights)
        metrics: dict[str, Any] = {
            "status": record.status, "examples": record.examples,
            "participants": len(record.participating_nodes),
            "failed": len(record.failed_nodes), "duration_s": record.duration_s,
            **({"loss": record.loss} if record.loss is not None else {}),
            **({"accuracy": record.accuracy} if record.accuracy is not None else {}),
            **record.train_metrics,
        }
        lineage = {"training_run": self.run_name, "federated_round": str(record.round),
                   "fl_job": str(self.job_id), "flower_run": str(record.run_id),
                   "base_version": self.spec.base_version}
        try:
            saved = checkpoints.add(
                self.spec.model, self.run_name, record.round, io.BytesIO(onnx_bytes),
                parent_version=self.spec.base_version, actor=self.actor, metrics=metrics,
                lineage=lineage)
        except CheckpointConflictError as e:  # registered meanwhile by someone else
            logger.warning("federated job %d: %s", self.job_id, e)
            return None
        return str(saved["digest"])

    def _finish(self, base_bytes: bytes) -> tuple[JobStatus, dict[str, Any]]:
        self._check_cancel()
        self.svc.update(self.job_id, phase="evaluating")
        checkpoints = checkpoint_service(self.svc.services)
        final = checkpoints.latest(self.spec.model, self.run_name)
        if final is None:
            raise JobFailed("no registry checkpoint to evaluate")
        rounds = [r for r in self.svc.rounds(self.job_id) if r["round"] > 0]
        base_path, cand_path = self.dir / "base.onnx", self.dir / "candidate.onnx"
        base_path.write_bytes(base_bytes)
        # the last checkpoint is the base graph with the trained weights
        shutil.copyfile(checkpoints.path(final), cand_path)
        holdout = load_holdout(Path(self.spec.holdout))
        base_acc = onnx_accuracy(base_path, holdout)
        cand_acc = onnx_accuracy(cand_path, holdout)
        nodes = self.svc.node_devices()
        participants = sorted({nodes.get(n, f"node:{n}") for r in rounds
                               for n in r["participating_nodes"]})
        dp = next((r["dp"] for r in reversed(rounds) if r["dp"]), None)
        result: dict[str, Any] = {
            "accuracy": cand_acc, "base_accuracy": base_acc, "margin": self.spec.margin,
            "holdout_examples": int(holdout.y.shape[0]), "rounds": int(final["round"]),
            "examples": int(sum(r["examples"] for r in rounds)),
            "participants": participants, "strategy": self.spec.strategy.value, "dp": dp,
            "bytes": int(sum(r["bytes_sent"] + r["bytes_received"] for r in rounds)),
            "duration_s": float(sum(r["duration_s"] for r in rounds)),
            "checkpoint": {"run": self.run_name, "round": int(final["round"]),
                           "digest": final["digest"]},
        }
        if cand_acc < base_acc + self.spec.margin:
            result["decision"] = (f"rejected: accuracy {cand_acc:.4f} < base {base_acc:.4f} "
                                  f"+ margin {self.spec.margin:g}")
            return JobStatus.REJECTED, result
        self._check_cancel()
        self.svc.update(self.job_id, phase="registering")
        q = quantize(cand_path, self.dir / "candidate-int8.onnx", holdout,
                     self.spec.max_quantization_drop)
        result["int8_accuracy"] = q.accuracy
        if q.path is None:
            result["decision"] = f"rejected: quantization failed: {q.error}"
            return JobStatus.REJECTED, result
        result["decision"] = (f"accepted: accuracy {cand_acc:.4f} >= base {base_acc:.4f} "
                              f"+ margin {self.spec.margin:g}")
        version = self.spec.new_version or f"{self.spec.base_version}-fl{self.job_id}"
        result["version"] = version
        result["int8_version"] = f"{version}-int8"
        self._register(cand_path, q.path, result, holdout)
        return JobStatus.SUCCEEDED, result

    def _register(self, float_path: Path, int8_path: Path, result: dict[str, Any],
                  holdout: Any) -> None:
        """The float candidate, then its int8 child: through the release publication when
        the job asks for a canary (then the canary rollout), directly otherwise."""
        self._register_float(float_path, result)
        if self.spec.canary is None:
            self._register_int8(int8_path, result)
            return
        from edgefleet.fleet_server.fljobs.canary import CanaryError, publish_int8, start_canary

        services = self.svc.services
        try:
            try:
                result["release"] = publish_int8(
                    services, self.spec, job_id=self.job_id, version=result["int8_version"],
                    float_version=result["version"], int8_path=int8_path,
                    float_path=float_path, holdout=holdout, work_dir=self.dir,
                    actor=self.actor)
            except CanaryError:
                self._register_int8(int8_path, result)  # the version exists all the same
                raise
            canary = start_canary(services, self.spec, job_id=self.job_id,
                                  version=result["int8_version"], actor=self.actor)
            result["canary"] = {"created": True, **canary}
        except CanaryError as e:
            reason = f"canary not created: {e}"
            logger.warning("federated job %d: %s", self.job_id, reason)
            result["canary"] = {"created": False, "reason": reason}
        with self.svc.store.transaction():
            self.svc.services.audit.record(self.actor, "fljob.canary", "fl_job",
                                           str(self.job_id), None, result["canary"])

    def _register_float(self, float_path: Path, result: dict[str, Any]) -> None:
        registry = registry_service(self.svc.services)
        spec = self.spec
        lineage = {
            "training_run": f"fljob:{self.job_id}",
            "federated_round": str(result["rounds"]),
            "fl_job": str(self.job_id),
            "base_version": spec.base_version,
            "flower_runs": json.dumps(self.svc.get(self.job_id, with_rounds=False)["run_ids"]),
            "cohort": json.dumps(self.job["cohort"]),
            "participants": json.dumps(result["participants"]),
            "examples": str(result["examples"]),
            "strategy": spec.strategy.value,
            "dp": json.dumps(result["dp"]),
            "checkpoint": f"{self.run_name}#{result['checkpoint']['round']}",
            "checkpoint_digest": result["checkpoint"]["digest"],
        }
        metrics = {k: result[k] for k in ("accuracy", "base_accuracy", "int8_accuracy",
                                          "holdout_examples", "examples", "rounds")}
        with float_path.open("rb") as f:
            registry.upload(spec.model, result["version"], f, UploadMetadata(
                description=f"federated job {self.job_id}: {spec.rounds} round(s) of "
                            f"{spec.strategy.value} from {spec.base_version}",
                metrics=metrics, parent=spec.base_version, lineage=lineage), self.actor)
        self._lineage = lineage

    def _register_int8(self, int8_path: Path, result: dict[str, Any]) -> None:
        registry = registry_service(self.svc.services)
        spec, lineage = self.spec, self._lineage
        int8_metrics = {"accuracy": result["int8_accuracy"], "float_accuracy": result["accuracy"],
                        "holdout_examples": result["holdout_examples"]}
        with int8_path.open("rb") as f:
            registry.upload(spec.model, result["int8_version"], f, UploadMetadata(
                description=f"dynamic int8 of {result['version']} (federated job "
                            f"{self.job_id})", quantization="dynamic-int8",
                metrics=int8_metrics, parent=result["version"],
                lineage={**lineage, "quantized_from": result["version"]}), self.actor)

    # -- helpers -----------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def _end(self, status: JobStatus, *, error: str | None = None,
             result: dict[str, Any] | None = None, result_version: str | None = None) -> None:
        with self.svc.store.transaction():
            current = self.svc.get(self.job_id, with_rounds=False)
            if JobStatus(current["status"]).final:  # cancelled meanwhile
                return
            fields: dict[str, Any] = {"status": status.value, "phase": status.value,
                                      "finished_at": utcnow(), "error": error,
                                      "result_version": result_version}
            if result is not None:
                fields["result"] = result
            if self.spec.every_s is not None:
                fields["next_run_at"] = self.svc.clock() + self.spec.every_s
            if self.spec.on_drift:
                fields["drift_watermark"] = self.svc.newest_drift_alert(self.spec.model)
            self.svc.update(self.job_id, **fields)
        logger.info("federated job %d ended: %s %s", self.job_id, status.value,
                    error or (result or {}).get("decision", ""))
