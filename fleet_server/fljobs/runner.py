"""One federated job from start to end, on the worker thread.

Steps, each recorded in ``fl_jobs.phase``:

1. ``preparing``: the base version's ONNX -> ``from_onnx`` -> initial weights
   (``<job dir>/init.npz``); the checkpoint directory is ``<job dir>/ckpt``.
2. ``training``: wait until ``min_nodes`` cohort nodes are online, submit the Flower run,
   copy every new round checkpoint into ``fl_rounds`` while it runs. A failed run is
   resumed from its last checkpoint as a new run, up to ``max_attempts`` runs in all.
3. ``evaluating``: ``write_weights_into(base graph, final weights)``; held-out accuracy of
   base and candidate; accept when candidate >= base + margin.
4. ``registering``: the candidate as a new registry version (parent: the base; lineage
   and metrics), then its dynamic-int8 quantization as a child version.

A job that is resumed after a server restart goes through the same steps; step 2 resumes
from the checkpoint directory if it holds rounds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.fleet_server.audit import Actor, ActorKind
from edgefleet.fleet_server.fljobs.errors import FlJobError
from edgefleet.fleet_server.fljobs.evaluate import load_holdout, onnx_accuracy, quantize
from edgefleet.fleet_server.fljobs.spec import JobSpec, JobStatus, parse_spec, run_config
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from edgefleet.fleet_server.storage import utcnow

if TYPE_CHECKING:
    from edgefleet.fleet_server.fljobs.service import FlJobService

logger = logging.getLogger(__name__)

POLL_S = 1.0
SUBMIT_SLACK_S = 120.0  # per attempt, beyond the rounds' own timeouts


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
        self.actor = Actor(ActorKind.SYSTEM, f"fljob:{job_id}", f"fljob:{job_id}", "")

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
        from edgefleet.federated.flower.checkpoint import latest_round
        from edgefleet.federated.flower.errors import RunError

        runs = list(self.job["run_ids"])
        attempts = int(self.job["attempts"])
        last_error = ""
        while True:
            done = latest_round(self.ckpt)
            if done is not None and done >= self.spec.rounds:
                self._sync_rounds()
                return
            if attempts >= self.spec.max_attempts:
                raise JobFailed(f"{attempts} Flower run(s) failed; last: {last_error}")
            self._check_cancel()
            self._wait_for_cohort()
            attempts += 1
            cohort = set(self.job["cohort"])
            config = run_config(self.spec, shape, checkpoint_dir=str(self.ckpt),
                                init_weights=str(self.dir / "init.npz"),
                                resume=done is not None,
                                node_ids=[n for n, d in self.svc.node_devices().items()
                                          if d in cohort])
            try:
                run_id = self.svc.federation.submit_run(config)
            except RunError as e:  # counts as a failed attempt
                last_error = str(e)
                self.svc.update(self.job_id, attempts=attempts)
                continue
            runs.append(run_id)
            self.svc.update(self.job_id, phase="training", attempts=attempts, run_ids=runs)
            logger.info("federated job %d: attempt %d is Flower run %d (resume from %s)",
                        self.job_id, attempts, run_id, done)
            last_error = self._follow(run_id)
            self._sync_rounds()
            if last_error:
                logger.warning("federated job %d: run %d failed: %s", self.job_id, run_id,
                               last_error)

    def _follow(self, run_id: int) -> str:
        """Poll the run until it ends; '' when it completed, else why it did not."""
        from edgefleet.federated.flower.errors import RunError

        spec = self.spec
        limit_s = (spec.node_wait_s + SUBMIT_SLACK_S
                   + spec.rounds * (2 * spec.round_timeout_s + spec.node_wait_s))
        deadline = time.monotonic() + limit_s
        while True:
            if self.cancel.wait(POLL_S):
                self.svc.federation.stop_run(run_id)
                raise Cancelled
            self._sync_rounds()
            try:
                state = self.svc.federation.run_state(run_id)
            except RunError as e:
                return str(e)
            if state.finished:
                return "" if state.succeeded else f"{state.sub_status}: {state.details}"
            if time.monotonic() > deadline:
                self.svc.federation.stop_run(run_id)
                return f"still {state.status} after {limit_s:.0f} s"

    def _wait_for_cohort(self) -> None:
        """Block until ``min_nodes`` of the cohort's Flower nodes are online."""
        cohort = set(self.job["cohort"])
        deadline = time.monotonic() + self.spec.node_wait_s
        while True:
            nodes = self.svc.node_devices()
            online = [nodes[n] for n in self.svc.federation.online_node_ids()
                      if nodes.get(n) in cohort]
            if len(online) >= self.spec.min_nodes:
                return
            if time.monotonic() > deadline:
                raise JobFailed(f"only {len(online)} of min_nodes {self.spec.min_nodes} "
                                f"cohort device(s) online after {self.spec.node_wait_s:.0f} s")
            if self.cancel.wait(POLL_S):
                raise Cancelled

    def _sync_rounds(self) -> None:
        """Copy round checkpoints (JSON) into ``fl_rounds``."""
        from edgefleet.federated.flower.checkpoint import list_records

        if not self.ckpt.is_dir():
            return
        rows = []
        for record in list_records(self.ckpt):
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

    def _finish(self, base_bytes: bytes) -> tuple[JobStatus, dict[str, Any]]:
        from edgefleet.federated.flower.checkpoint import list_records, load_round
        from edgefleet.federated.models import write_weights_into

        self._check_cancel()
        self.svc.update(self.job_id, phase="evaluating")
        final = load_round(self.ckpt)
        records = [r for r in list_records(self.ckpt) if r.round > 0]
        base_path, cand_path = self.dir / "base.onnx", self.dir / "candidate.onnx"
        base_path.write_bytes(base_bytes)
        cand_path.write_bytes(write_weights_into(base_bytes, final.weights))
        holdout = load_holdout(Path(self.spec.holdout))
        base_acc = onnx_accuracy(base_path, holdout)
        cand_acc = onnx_accuracy(cand_path, holdout)
        nodes = self.svc.node_devices()
        participants = sorted({nodes.get(n, f"node:{n}") for r in records
                               for n in r.participating_nodes})
        dp = next((r.dp for r in reversed(records) if r.dp), None)
        result: dict[str, Any] = {
            "accuracy": cand_acc, "base_accuracy": base_acc, "margin": self.spec.margin,
            "holdout_examples": int(holdout.y.shape[0]), "rounds": final.round,
            "examples": int(sum(r.examples for r in records)),
            "participants": participants, "strategy": self.spec.strategy.value, "dp": dp,
            "bytes": int(sum(r.bytes_sent + r.bytes_received for r in records)),
            "duration_s": float(sum(r.duration_s for r in records)),
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
        self._register(cand_path, q.path, result)
        return JobStatus.SUCCEEDED, result

    def _register(self, float_path: Path, int8_path: Path, result: dict[str, Any]) -> None:
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
        }
        metrics = {k: result[k] for k in ("accuracy", "base_accuracy", "int8_accuracy",
                                          "holdout_examples", "examples", "rounds")}
        with float_path.open("rb") as f:
            registry.upload(spec.model, result["version"], f, UploadMetadata(
                description=f"federated job {self.job_id}: {spec.rounds} round(s) of "
                            f"{spec.strategy.value} from {spec.base_version}",
                metrics=metrics, parent=spec.base_version, lineage=lineage), self.actor)
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
