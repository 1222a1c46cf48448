"""Real federated jobs: the server's own SuperLink (TLS + SuperNode auth, started by its
FederationManager), three real SuperNodes on non-IID digits shards whose keys are
registered through ``POST /fl/nodes``.

* two FedAvg rounds of a registered logistic regression end in a new registry version
  that runs in the agent runtime;
* the SuperLink process is SIGKILLed after the first round's registry checkpoint: the
  supervisor restarts it (same address, same state database: the node registrations
  survive, the SuperNodes reconnect), the job resumes from that checkpoint as a new
  Flower run and completes every round exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.runtime import load_model
from edgefleet.federated.flower.data import write_node_data
from edgefleet.federated.flower.processes import RestartPolicy, SuperNode
from edgefleet.federated.flower.tls import make_node_key
from edgefleet.fleet_server.registry.api import checkpoint_service, registry_service
from tests.federated.conftest import DigitsSplit
from tests.fleet_server.fljobs.conftest import BASE, MODEL, FlEnv, make_fl_env

JOB_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Fleet:
    env: FlEnv
    nodes: dict[str, SuperNode]  # device id -> its SuperNode
    node_ids: dict[str, int]  # device id -> node id the server registered


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, digits: DigitsSplit) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fljobs-e2e")
    env = make_fl_env(base, digits, autorun=True)
    nodes: dict[str, SuperNode] = {}
    try:
        node_ids: dict[str, int] = {}
        for i, device in enumerate(env.devices):
            key = make_node_key(base / "devices" / device / "flower.key")
            rv = env.post("/fl/nodes", {"device_id": device,
                                        "public_key": key.public_key_pem.decode()})
            assert rv.status_code == 201, rv.json
            node_ids[device] = rv.json["node_id"]
            superlink = env.svc.federation.federation().superlink
            assert rv.json["superlink"] == superlink.address
            assert rv.json["ca_cert"].startswith("-----BEGIN CERTIFICATE-----")
            data = base / "devices" / device / "data.npz"
            write_node_data(data, digits.node_x[i], digits.node_y[i])
            node = SuperNode(device, superlink, {"data-path": str(data)},
                             work_dir=base / "devices" / device, auth_key=key,
                             restart=RestartPolicy(max_restarts=40, max_backoff_s=5.0))
            node.start()
            nodes[device] = node
        for device, node in nodes.items():
            assert node.wait_ready(120) == node_ids[device]
        yield Fleet(env, nodes, node_ids)
    finally:
        for node in nodes.values():
            node.stop()
        env.svc.close()
        env.services.store.close()
    running = [d for d, n in nodes.items() if n.process.running]
    assert not running and not env.svc.federation.started


def _wait_final(env: FlEnv, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = env.get(f"/fl/jobs/{job_id}").json
        if job["status"] not in ("queued", "running"):
            return dict(job)
        time.sleep(1.0)
    raise AssertionError(f"job {job_id} not finished after {JOB_TIMEOUT_S:.0f} s")


@pytest.mark.timeout(900)
def test_a_federated_job_ends_in_a_registered_version_that_devices_can_run(
    fleet: Fleet, digits: DigitsSplit
) -> None:
    env = fleet.env
    info = env.get("/fl/federation").json
    assert info["running"] is True and info["supernode_auth"] is True
    started = time.monotonic()
    rv = env.post("/fl/jobs", env.job_body(min_nodes=3, rounds=2, local_epochs=2, lr=0.5,
                                           round_timeout_s=240, node_wait_s=120))
    assert rv.status_code == 201, rv.json
    job = _wait_final(env, rv.json["id"])
    elapsed = time.monotonic() - started
    assert job["status"] == "succeeded", (job["error"], job.get("result"))
    assert job["attempts"] == 1 and len(job["run_ids"]) == 1

    everyone = sorted(fleet.node_ids.values())
    rounds = job["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    n_train = sum(len(y) for y in digits.node_y)
    for r in rounds[1:]:
        assert r["status"] == "aggregated" and r["participating_nodes"] == everyone
        assert r["failed_nodes"] == [] and 0.75 * n_train < r["examples"] < 0.85 * n_train
        assert r["bytes_sent"] > 0 and r["bytes_received"] > 0 and r["duration_s"] > 0
        assert "holdout-accuracy" in r["train_metrics"]

    result = job["result"]
    registry = registry_service(env.services)
    record = registry.get_version(MODEL, job["result_version"])
    assert record["parent"] == f"{MODEL}@{BASE}"
    assert record["lineage"]["training_run"] == f"fljob:{job['id']}"
    assert record["lineage"]["participants"] == str(sorted(env.devices)).replace("'", '"')
    assert record["metrics"]["accuracy"] == result["accuracy"]
    with load_model(registry.artifact_path(MODEL, job["result_version"])) as runner:
        labels = runner.predict(digits.x_test)["label"]
    accuracy = float(np.mean(labels == digits.y_test))
    assert accuracy == pytest.approx(result["accuracy"])
    # Non-IID shards: only a model that learned from every node's classes gets here.
    assert accuracy > result["base_accuracy"] + 0.3, result
    int8 = registry.get_version(MODEL, f"{job['result_version']}-int8")
    assert int8["metrics"]["accuracy"] == result["int8_accuracy"]
    print(f"\nfederated job: {elapsed:.1f} s; round wall times (s) "
          f"{[round(r['duration_s'], 1) for r in rounds[1:]]}; held-out accuracy "
          f"{result['base_accuracy']:.3f} -> {result['accuracy']:.3f} "
          f"(int8 {result['int8_accuracy']:.3f})")


def test_registering_the_same_device_twice_is_a_conflict(fleet: Fleet, tmp_path: Path) -> None:
    key = make_node_key(tmp_path / "again.key")
    rv = fleet.env.post("/fl/nodes", {"device_id": fleet.env.devices[0],
                                      "public_key": key.public_key_pem.decode()})
    assert rv.status_code == 409


@pytest.mark.timeout(900)
def test_a_superlink_killed_mid_job_resumes_from_the_last_registry_checkpoint(
    fleet: Fleet, digits: DigitsSplit
) -> None:
    env = fleet.env
    manager = env.svc.federation
    superlink = manager.federation().superlink
    address, pid, generation = superlink.address, superlink.process.pid, manager.generation()
    assert pid is not None
    rv = env.post("/fl/jobs", env.job_body(min_nodes=3, rounds=2, local_epochs=2, lr=0.5,
                                           round_timeout_s=120, node_wait_s=120))
    assert rv.status_code == 201, rv.json
    job_id, run = rv.json["id"], f"fljob:{rv.json['id']}"
    checkpoints = checkpoint_service(env.services)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while checkpoints.latest(MODEL, run) is None:
        assert time.monotonic() < deadline, env.get(f"/fl/jobs/{job_id}").json
        time.sleep(0.2)
    assert checkpoints.latest(MODEL, run)["round"] == 1  # round 2 is under way
    os.kill(pid, signal.SIGKILL)  # the SuperLink process only: a crash
    killed_at = time.time()

    job = _wait_final(env, job_id)
    assert job["status"] == "succeeded", (job["error"], job.get("result"))
    # the supervisor restarted it in place: same address and CA, same registrations
    assert superlink.process.pid != pid and manager.generation() != generation
    assert manager.join_info()["superlink"] == address
    with superlink.control() as control:
        listed = {n.node_id: n.status for n in control.list_nodes()}
    assert all(listed.get(n) == "online" for n in fleet.node_ids.values()), listed

    first, second = job["run_ids"]
    assert job["attempts"] == 2
    rounds = job["rounds"]
    assert [(r["round"], r["run_id"]) for r in rounds] == [(0, first), (1, first),
                                                           (2, second)]
    everyone = sorted(fleet.node_ids.values())
    assert all(r["status"] == "aggregated" and r["participating_nodes"] == everyone
               for r in rounds[1:])
    resumed = [json.loads(row[0])["resumed_from"] for row in env.services.store.db.execute(
        "SELECT record FROM fl_rounds WHERE job_id = ? ORDER BY round", [job_id])]
    assert resumed == [None, None, 1]
    saved = [(c["round"], c["lineage"]["flower_run"])
             for c in checkpoints.list(MODEL, run=run)[0]]
    assert saved == [(2, str(second)), (1, str(first))]

    result = job["result"]
    assert result["checkpoint"]["round"] == 2
    record = registry_service(env.services).get_version(MODEL, job["result_version"])
    assert record["lineage"]["checkpoint"] == f"{run}#2"
    assert record["digest"] == checkpoints.get(MODEL, run, 2)["digest"]
    assert result["accuracy"] > result["base_accuracy"] + 0.3, result
    starts = [json.loads(row[0])["started_at"] for row in env.services.store.db.execute(
        "SELECT record FROM fl_rounds WHERE job_id = ? ORDER BY round", [job_id])]
    print(f"\nSuperLink killed; round 2 (new run) started {starts[2] - killed_at:.1f} s "
          f"later; job {time.time() - starts[0]:.1f} s; round wall times (s) "
          f"{[round(r['duration_s'], 1) for r in rounds[1:]]}")
