"""(h) federated rounds: a fleet-server job against a bare Flower run, same nodes.

One real fleet server (the Flask app with the ``fljobs`` feature and its worker thread, in
this process) starts its own SuperLink (``FederationManager``: TLS + SuperNode
authentication). Three real SuperNodes on non-IID digits shards join it, their keys
registered through ``POST /fl/nodes``. The model is the all-zero logistic regression
64→10 registered as the base version; FedAvg, 1 local epoch, lr 0.5, federated
evaluation after every round (the job default).

* **Warm-up**: one bare round, not counted (the nodes install the app and import it once).
* **Bare Flower run**: the run config the job would send (``fljobs.spec.run_config``, same
  strategy, node ids, initial weights) submitted directly with ``Federation.submit_run``;
  timed from the submission until the Control API reports the run finished.
* **Job**: ``POST /fl/jobs`` with the same parameters; timed from the POST until the job
  left its training phase (``GET /fl/jobs/<id>`` shows ``evaluating``, every round copied
  into the database). That includes what the job layer adds: the cohort and eligibility
  checks, the wait for online cohort nodes, its 1 s run polling and checkpoint copying.
  Evaluation, quantization and registration come after and are printed in the detail.

Both sides are observed with the same 0.2 s polling. The figure is the job's wall time
per round over the bare run's, goal ≤ 1.2 (both include the ServerApp start and round 0,
as a user sees them). The detail gives the per-round durations the round loop records in
the checkpoints, the devices' peak RSS while rounds run (``VmRSS`` summed over each
SuperNode's process tree: SuperNode, SuperExec, ClientApp processes, sampled every
0.2 s; and the largest single-process ``VmHWM``) and the bytes per round (array payload
sent + received, from the round records).

Full run: runs of 3 rounds in the order bare, job, job, bare (a load change during the
benchmark hits both sides), each side's walls added. Quick run (``--quick``): one bare
and one job run of one round.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.figures import Figure, Goal, run_alone
from benchmarks.settings import Settings
from edgefleet.tools.modelgen.digits import NODE_CLASS_GROUPS, NodeShards, non_iid_shards

RATIO_GOAL = 1.2
N_NODES = len(NODE_CLASS_GROUPS)  # node i holds mostly the classes of group i (0.85)
ROUNDS, ROUNDS_QUICK = 3, 1
POLL_S = 0.2
RSS_PERIOD_S = 0.2
RUN_TIMEOUT_S = 900.0
MODEL, BASE, GROUP = "bench-digits", "1.0", "bench-fl"
API = "/api/v1"


def _quick(settings: Settings) -> bool:
    return settings.heavy_iterations < Settings().heavy_iterations


# -- device memory ----------------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(root: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass
class RssPeak:
    """Peaks over one sampling period, in kB."""

    tree_kb: dict[str, int] = field(default_factory=dict)  # node -> peak sum of VmRSS
    hwm_kb: int = 0  # largest VmHWM of any one process of any node's tree
    processes: int = 0  # most processes seen in one node's tree
    samples: int = 0

    @property
    def device_mb(self) -> float:
        return max(self.tree_kb.values(), default=0) / 1024


class RssSampler:
    """Samples the process trees of the SuperNodes every RSS_PERIOD_S in a thread."""

    def __init__(self, roots: Callable[[], dict[str, int | None]]) -> None:
        self.roots = roots
        self.peak = RssPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self.peak

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(RSS_PERIOD_S):
            children = _children()
            for name, root in self.roots().items():
                if root is None:
                    continue
                pids = _tree(root, children)
                total = sum(_status_kb(p, "VmRSS") for p in pids)
                hwm = max((_status_kb(p, "VmHWM") for p in pids), default=0)
                self.peak.tree_kb[name] = max(self.peak.tree_kb.get(name, 0), total)
                self.peak.hwm_kb = max(self.peak.hwm_kb, hwm)
                self.peak.processes = max(self.peak.processes, len(pids))
            self.peak.samples += 1


# -- the fleet server and its devices ---------------------------------------------------


@dataclass
class Bench:
    """The app, its tokens, the SuperNodes (device id -> SuperNode) and the data."""

    app: Any
    services: Any
    work: Path
    shards: NodeShards
    holdout: Path
    tokens: dict[str, str]
    nodes: dict[str, Any] = field(default_factory=dict)

    @property
    def svc(self) -> Any:
        from edgefleet.fleet_server.fljobs import fljob_service

        return fljob_service(self.services)

    def call(self, method: str, path: str, body: Any = None, role: str = "operator") -> Any:
        client = self.app.test_client()
        rv = client.open(API + path, method=method, json=body,
                         headers={"Authorization": f"Bearer {self.tokens[role]}"})
        if rv.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {rv.status_code} {rv.get_data(as_text=True)}")
        return rv.json

    def job_body(self, rounds: int) -> dict[str, Any]:
        return {"model": MODEL, "base_version": BASE, "cohort": {"group": GROUP},
                "holdout": str(self.holdout), "min_nodes": N_NODES, "rounds": rounds,
                "local_epochs": 1, "lr": 0.5, "strategy": "fedavg", "evaluate_every": 1,
                "round_timeout_s": 240, "node_wait_s": 120, "margin": -1.0}

    def node_pids(self) -> dict[str, int | None]:
        return {name: node.process.pid for name, node in self.nodes.items()}


@contextmanager
def _fleet(work: Path) -> Iterator[Bench]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.federated.flower.data import write_node_data
    from edgefleet.federated.flower.processes import RestartPolicy, SuperNode
    from edgefleet.federated.flower.tls import make_node_key
    from edgefleet.federated.models import create, to_onnx
    from edgefleet.fleet_server.app import all_components, create_app
    from edgefleet.fleet_server.audit import SYSTEM
    from edgefleet.fleet_server.auth.roles import Role
    from edgefleet.fleet_server.config import load_config
    from edgefleet.fleet_server.datadir import init_data_dir
    from edgefleet.fleet_server.devices.enrollment import EnrollmentService
    from edgefleet.fleet_server.devices.groups import GroupService
    from edgefleet.fleet_server.fljobs.service import AUTORUN_KEY
    from edgefleet.fleet_server.registry.api import registry_service
    from edgefleet.fleet_server.registry.metadata import UploadMetadata

    data_dir = work / "server"
    init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}, session_cookie_secure=False))
    services = app.extensions["edgefleet"]
    services.extras[AUTORUN_KEY] = True
    shards = non_iid_shards()  # the same split the tests use
    holdout = work / "holdout.npz"
    np.savez(holdout, x=shards.x_test, y=shards.y_test)
    tokens = {}
    for role in (Role.VIEWER, Role.OPERATOR):
        _, tokens[role.value] = services.tokens.create(
            SYSTEM, name=f"bench-{role.value}", role=role, user_id=None, owner_role=None)
    bench = Bench(app, services, work, shards, holdout, tokens)
    try:
        base = io.BytesIO(to_onnx(create("logreg", 64, 10)))
        registry_service(services).upload(MODEL, BASE, base,
                                          UploadMetadata(description="all-zero logreg"), SYSTEM)
        GroupService(services.store, services.audit).create_group(GROUP, SYSTEM)
        enrollment = EnrollmentService(services.store, services.audit)
        for i in range(N_NODES):
            raw = Ed25519PrivateKey.generate().public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            _, secret = enrollment.create_token(SYSTEM, group=GROUP)
            device = enrollment.enroll(secret, base64.b64encode(raw).decode()).device_id
            home = work / "devices" / device
            key = make_node_key(home / "flower.key")
            joined = bench.call("POST", "/fl/nodes", {"device_id": device,
                                                      "public_key": key.public_key_pem.decode()})
            write_node_data(home / "data.npz", shards.node_x[i], shards.node_y[i])
            superlink = bench.svc.federation.federation().superlink
            assert joined["superlink"] == superlink.address
            node = SuperNode(device, superlink, {"data-path": str(home / "data.npz")},
                             work_dir=home, auth_key=key,
                             restart=RestartPolicy(max_restarts=10, max_backoff_s=5.0))
            node.start()
            bench.nodes[device] = node
        for node in bench.nodes.values():
            node.wait_ready(120)
        yield bench
    finally:
        for node in bench.nodes.values():
            node.stop()
        bench.svc.close()
        services.store.close()


# -- the two ways of running the same rounds --------------------------------------------


@dataclass(frozen=True)
class Timed:
    """One run's rounds as measured."""

    wall_s: float  # submission (or POST) until the rounds were done, as observed
    durations: list[float]  # duration_s of rounds 1..N from the round records
    bytes_per_round: float  # mean bytes sent + received per round 1..N
    rss: RssPeak
    extra: str = ""

    @property
    def rounds(self) -> int:
        return len(self.durations)

    @property
    def outside_s(self) -> float:
        """Wall time not inside the recorded rounds 1..N."""
        return self.wall_s - sum(self.durations)

    @property
    def per_round_s(self) -> float:
        return self.wall_s / max(self.rounds, 1)


def _record_stats(rows: Iterable[Any]) -> tuple[list[float], float]:
    rows = [r for r in rows if int(r["round"]) > 0]
    durations = [float(r["duration_s"]) for r in rows]
    sizes = [int(r["bytes_sent"]) + int(r["bytes_received"]) for r in rows]
    return durations, float(np.mean(sizes)) if sizes else 0.0


def _bare_run(bench: Bench, rounds: int, name: str) -> Timed:
    """The job's run config submitted straight to the SuperLink; polled until finished."""
    from edgefleet.federated.flower.checkpoint import list_records
    from edgefleet.federated.flower.errors import RunError
    from edgefleet.federated.models import from_onnx
    from edgefleet.fleet_server.fljobs.service import model_shape
    from edgefleet.fleet_server.fljobs.spec import parse_spec, run_config
    from edgefleet.fleet_server.registry.api import registry_service

    spec = parse_spec(bench.job_body(rounds))
    base = registry_service(bench.services).artifact_path(MODEL, BASE).read_bytes()
    run_dir = bench.work / "bare" / name
    run_dir.mkdir(parents=True)
    init = run_dir / "init.npz"
    np.savez(init, **from_onnx(base).weights())
    config = run_config(spec, model_shape(base), checkpoint_dir=str(run_dir / "ckpt"),
                        init_weights=str(init),
                        node_ids=list(bench.svc.node_devices()))
    federation = bench.svc.federation.federation()
    with RssSampler(bench.node_pids) as rss:
        started = time.monotonic()
        run_id = federation.submit_run(None, config)
        with federation.superlink.control() as control:
            while not (state := control.run_state(run_id)).finished:
                if time.monotonic() - started > RUN_TIMEOUT_S:
                    raise RunError(f"bare run {run_id} still {state.status}")
                time.sleep(POLL_S)
        wall = time.monotonic() - started
    if not state.succeeded:
        raise RunError(f"bare run {run_id}: {state.sub_status} {state.details}")
    durations, per_round = _record_stats(r.to_json() for r in list_records(run_dir / "ckpt"))
    return Timed(wall, durations, per_round, rss)


def _job_run(bench: Bench, rounds: int) -> Timed:
    """``POST /fl/jobs``; polled through the API until training is over, then to the end."""
    with RssSampler(bench.node_pids) as rss:
        started = time.monotonic()
        job_id = bench.call("POST", "/fl/jobs", bench.job_body(rounds))["id"]
        while True:
            job = bench.call("GET", f"/fl/jobs/{job_id}", role="viewer")
            if job["status"] not in ("queued", "running") or job["phase"] not in (
                    "queued", "preparing", "training"):
                break
            if time.monotonic() - started > RUN_TIMEOUT_S:
                raise RuntimeError(f"job {job_id} still {job['phase']}")
            time.sleep(POLL_S)
        wall = time.monotonic() - started
    while job["status"] in ("queued", "running"):
        if time.monotonic() - started > RUN_TIMEOUT_S:
            raise RuntimeError(f"job {job_id} still {job['phase']}")
        time.sleep(POLL_S)
        job = bench.call("GET", f"/fl/jobs/{job_id}", role="viewer")
    total = time.monotonic() - started
    if job["status"] not in ("succeeded", "rejected") or len(job["run_ids"]) != 1:
        raise RuntimeError(f"job {job_id} {job['status']} after {len(job['run_ids'])} "
                           f"run(s): {job.get('error')}")
    durations, per_round = _record_stats(job["rounds"])
    result = job.get("result") or {}
    extra = (f"whole job {total:.1f} s incl. evaluation + registration, {job['status']}, "
             f"accuracy {result.get('base_accuracy', 0):.3f} -> {result.get('accuracy', 0):.3f}")
    return Timed(wall, durations, per_round, rss, extra)


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _merge(runs: list[Timed]) -> Timed:
    """Several runs of one side as one: walls added, records concatenated, peaks kept."""
    rss = RssPeak()
    for r in runs:
        for name, kb in r.rss.tree_kb.items():
            rss.tree_kb[name] = max(rss.tree_kb.get(name, 0), kb)
        rss.hwm_kb = max(rss.hwm_kb, r.rss.hwm_kb)
        rss.processes = max(rss.processes, r.rss.processes)
        rss.samples += r.rss.samples
    return Timed(sum(r.wall_s for r in runs), [d for r in runs for d in r.durations],
                 float(np.mean([r.bytes_per_round for r in runs])), rss,
                 "; ".join(r.extra for r in runs if r.extra))


def run(workdir: Path, settings: Settings) -> Iterator[Figure]:
    quick = _quick(settings)
    rounds = ROUNDS_QUICK if quick else ROUNDS
    # Full run: bare, job, job, bare, so a load change during the run hits both sides.
    order = ("bare", "job") if quick else ("bare", "job", "job", "bare")
    bares: list[Timed] = []
    jobs: list[Timed] = []
    with _fleet(workdir / "federated") as bench:
        if not quick:  # the quick run is a smoke test of the figures, not of the ratio
            _bare_run(bench, 1, "warmup")
        for i, side in enumerate(order):
            if side == "bare":
                bares.append(_bare_run(bench, rounds, f"measured-{i}"))
            else:
                jobs.append(_job_run(bench, rounds))
    bare, job = _merge(bares), _merge(jobs)
    if any(t.rounds != rounds for t in bares + jobs):
        raise RuntimeError(f"rounds recorded: bare {[t.rounds for t in bares]}, "
                           f"job {[t.rounds for t in jobs]}, expected {rounds} each")
    ratio = job.per_round_s / bare.per_round_s
    yield Figure(
        key="federated.round-ratio",
        label=f"job / bare Flower wall time per round ({len(order)} runs x {rounds} rounds)",
        value=ratio, unit="×", goal=RATIO_GOAL, direction=Goal.AT_MOST,
        detail=(f"per round: bare {bare.per_round_s:.2f} s, job {job.per_round_s:.2f} s "
                f"(runs {'/'.join(f'{t.wall_s:.1f}' for t in bares)} s bare, "
                f"{'/'.join(f'{t.wall_s:.1f}' for t in jobs)} s job); outside the rounds "
                f"(submission, ServerApp start, round 0, end detection, job steps) bare "
                f"{bare.outside_s / len(bares):.1f} s, job {job.outside_s / len(jobs):.1f} s "
                f"per run; round records bare "
                f"{_fmt(bare.durations)} s, job {_fmt(job.durations)} s; "
                f"device RSS peak (SuperNode tree) bare {bare.rss.device_mb:.0f} MB, job "
                f"{job.rss.device_mb:.0f} MB, largest process VmHWM "
                f"{max(bare.rss.hwm_kb, job.rss.hwm_kb) / 1024:.0f} MB, up to "
                f"{max(bare.rss.processes, job.rss.processes)} processes per device; bytes per "
                f"round bare {bare.bytes_per_round / 1024:.1f} KiB, job "
                f"{job.bytes_per_round / 1024:.1f} KiB (sent + received, 3 nodes); "
                f"{job.extra}"),
    )


if __name__ == "__main__":
    run_alone("federated", __doc__, run)
