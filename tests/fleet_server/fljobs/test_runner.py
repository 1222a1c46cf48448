"""A job's life on the worker with an injected federation (fault injection: Flower runs
that fail after some rounds): resume as a new run, evaluation against the base, the
margin, registration with lineage, quantization, schedules. Real registry, real ONNX,
real quantizer; the real SuperLink is in test_end_to_end.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.runtime import load_model
from edgefleet.fleet_server.fljobs.spec import JobStatus
from edgefleet.fleet_server.registry.api import registry_service
from tests.federated.conftest import DigitsSplit
from tests.fleet_server.fljobs.conftest import (
    BASE,
    MODEL,
    FakeFederation,
    FlEnv,
    make_fl_env,
    trained_weights,
)

NODES = [1000, 1001, 1002]


@pytest.fixture
def live(tmp_path: Path, digits: DigitsSplit) -> Iterator[FlEnv]:
    """An app whose jobs run on the worker thread."""
    env = make_fl_env(tmp_path, digits, autorun=True)
    env.seed_nodes()
    yield env
    env.svc.close()
    env.services.store.close()


def _run(env: FlEnv, fake: FakeFederation, **overrides: Any) -> dict[str, Any]:
    env.svc.federation = fake  # type: ignore[assignment]
    rv = env.post("/fl/jobs", env.job_body(**overrides))
    assert rv.status_code == 201, rv.json
    assert env.svc.wait_idle(120)
    return dict(env.get(f"/fl/jobs/{rv.json['id']}").json)


def test_a_failed_run_resumes_from_its_checkpoint_and_the_result_is_registered(
    live: FlEnv, digits: DigitsSplit
) -> None:
    fake = FakeFederation(trained_weights(digits), NODES, fail_after=[1, None])
    job = _run(live, fake, rounds=3, dp={"clipping_norm": 2.0, "noise_multiplier": 0.1})
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["run_ids"] == [101, 102]
    assert [c["start-round"] for c in fake.configs] == [1, 2]
    first, second = fake.configs
    assert first["init-weights"].endswith("init.npz") and first["num-rounds"] == 3
    # the second run starts from the registry checkpoint of round 1, in its own directory
    assert second["init-weights"].endswith("resume-r0001.npz")
    assert second["checkpoint-dir"] != first["checkpoint-dir"]
    assert first["dp-clipping-norm"] == 2.0 and first["dp-noise-multiplier"] == 0.1
    assert first["model-family"] == "logreg" and first["n-features"] == 64

    rounds = job["rounds"]
    assert [(r["round"], r["run_id"]) for r in rounds] == [(0, 101), (1, 101), (2, 102),
                                                           (3, 102)]
    run = f"fljob:{job['id']}"
    checkpoints = live.get(f"/models/{MODEL}/checkpoints?run={run}").json["items"]
    assert [(c["round"], c["lineage"]["flower_run"]) for c in checkpoints] == [
        (3, "102"), (2, "102"), (1, "101")]
    assert all(c["parent"] == f"{MODEL}@{BASE}" and c["framework"] == "onnx"
               and c["digest"].startswith("sha256:") for c in checkpoints)
    assert rounds[1]["failed_nodes"] == [{"node_id": 1002, "phase": "train",
                                          "reason": "timeout", "code": None}]
    assert rounds[1]["participating_nodes"] == NODES and rounds[1]["examples"] == 300
    assert rounds[1]["bytes_sent"] > 0 and rounds[1]["train_metrics"]["global-accuracy"]

    result = job["result"]
    assert result["accuracy"] > result["base_accuracy"] + 0.5
    assert result["int8_accuracy"] > result["base_accuracy"] + 0.5
    assert result["participants"] == sorted(live.devices) and result["examples"] == 900
    version = f"{BASE}-fl{job['id']}"
    assert job["result_version"] == version == result["version"]

    registry = registry_service(live.services)
    record = registry.get_version(MODEL, version)
    lineage = record["lineage"]
    assert lineage["training_run"] == f"fljob:{job['id']}" and lineage["base_version"] == BASE
    assert lineage["federated_round"] == "3" and lineage["strategy"] == "fedavg"
    assert lineage["flower_runs"] == "[101, 102]" and lineage["examples"] == "900"
    assert record["metrics"]["accuracy"] == result["accuracy"]
    assert record["parent"] == f"{MODEL}@{BASE}"
    graph = registry.lineage(MODEL, version)
    assert any(n["id"] == f"training_run:fljob:{job['id']}" for n in graph["nodes"]), graph
    int8 = registry.get_version(MODEL, f"{version}-int8")
    assert int8["quantization"] == "dynamic-int8" and int8["parent"] == f"{MODEL}@{version}"
    with load_model(registry.artifact_path(MODEL, version)) as runner:
        probs = runner.predict(digits.x_test)["probabilities"]
    assert abs(float(np.mean(probs.argmax(1) == digits.y_test)) - result["accuracy"]) < 1e-9


def test_a_result_below_the_margin_is_recorded_not_registered(
    live: FlEnv, digits: DigitsSplit
) -> None:
    job = _run(live, FakeFederation(trained_weights(digits), NODES), margin=0.99)
    assert job["status"] == "rejected" and job["result_version"] is None
    assert job["result"]["decision"].startswith("rejected: accuracy")
    versions, _ = registry_service(live.services).list_versions(MODEL)
    assert [v["version"] for v in versions] == [BASE]


def test_a_negative_margin_accepts_a_slightly_worse_model(
    live: FlEnv, digits: DigitsSplit
) -> None:
    from edgefleet.federated.models import create

    zeros = create("logreg", 64, 10).weights()  # the base itself: accuracy equal
    job = _run(live, FakeFederation(zeros, NODES), margin=-0.01, new_version="1.1")
    assert job["status"] == "succeeded" and job["result_version"] == "1.1"
    assert job["result"]["accuracy"] == job["result"]["base_accuracy"]


def test_a_job_fails_after_max_attempts(live: FlEnv, digits: DigitsSplit) -> None:
    fake = FakeFederation(trained_weights(digits), NODES, fail_after=[0, 0])
    job = _run(live, fake, max_attempts=2)
    assert job["status"] == "failed" and job["attempts"] == 2
    assert "2 Flower run(s) failed" in job["error"] and "injected failure" in job["error"]


def test_a_rejected_submission_counts_as_an_attempt(live: FlEnv, digits: DigitsSplit) -> None:
    job = _run(live, FakeFederation(trained_weights(digits), NODES, refuse=1))
    assert job["status"] == "succeeded" and job["attempts"] == 2 and job["run_ids"] == [101]


def test_an_interval_schedule_starts_the_next_run(live: FlEnv, digits: DigitsSplit) -> None:
    fake = FakeFederation(trained_weights(digits), NODES)
    job = _run(live, fake, every_s=3600)
    assert job["status"] == "succeeded" and job["next_run_at"] is not None
    svc = live.svc
    assert svc.tick() == []  # not due yet
    svc.clock = lambda: float(job["next_run_at"]) + 1
    started = svc.tick()
    assert len(started) == 1
    assert svc.wait_idle(120)
    again = live.get(f"/fl/jobs/{started[0]}").json
    assert again["scheduled_from"] == job["id"] and again["status"] == "succeeded"
    assert again["result_version"] == f"{BASE}-fl{again['id']}"
    assert live.get(f"/fl/jobs/{job['id']}").json["next_job_id"] == started[0]
    assert svc.tick() == []  # the first job's schedule moved on to the new job


def test_cancel_stops_the_running_flower_run(live: FlEnv, digits: DigitsSplit) -> None:
    fake = FakeFederation(trained_weights(digits), NODES)
    original = fake.run_state

    def never_finishes(run_id: int) -> Any:
        state = original(run_id)
        return type(state)(run_id, "running", "", "")

    fake.run_state = never_finishes  # type: ignore[method-assign]
    live.svc.federation = fake  # type: ignore[assignment]
    job = live.post("/fl/jobs", live.job_body()).json
    deadline = 100
    while not fake.configs and deadline:
        import time

        time.sleep(0.1)
        deadline -= 1
    rv = live.post(f"/fl/jobs/{job['id']}/cancel", {})
    assert rv.status_code == 200 and rv.json["status"] == "cancelled"
    assert live.svc.wait_idle(60)
    assert fake.stopped == [101]
    assert live.get(f"/fl/jobs/{job['id']}").json["status"] == JobStatus.CANCELLED.value


def _open_alert(env: FlEnv, model: str) -> int:
    db = env.services.store.db
    n = db.execute("SELECT COUNT(*) FROM fleetdrift_alerts").fetchone()[0]
    row = {"model": model, "version": BASE, "scope_kind": "group", "scope_id": f"g{n}",
           "status": "open", "opened_at": "2026-01-01T00:00:00+00:00", "drifted": "[]",
           "open_report": "{}"}
    return int(db["fleetdrift_alerts"].insert(row).last_pk)


def test_a_drift_alert_for_the_model_starts_the_next_run(live: FlEnv,
                                                         digits: DigitsSplit) -> None:
    old = _open_alert(live, MODEL)  # before the job ended: never triggers
    job = _run(live, FakeFederation(trained_weights(digits), NODES), on_drift=True)
    assert job["status"] == "succeeded" and job["drift_watermark"] == old
    svc = live.svc
    _open_alert(live, "another-model")
    assert svc.tick() == []
    alert = _open_alert(live, MODEL)
    started = svc.tick()
    assert len(started) == 1
    assert svc.wait_idle(120)
    again = live.get(f"/fl/jobs/{started[0]}").json
    assert again["trigger"] == f"drift:{alert}" and again["scheduled_from"] == job["id"]
    assert again["status"] == "succeeded" and again["spec"]["on_drift"] is True
    assert svc.tick() == []  # handled; the new job waits for a newer alert


def test_a_job_interrupted_by_a_restart_resumes_from_its_checkpoint(
    fl: FlEnv, digits: DigitsSplit
) -> None:
    """The server died during round 2 of run 7, before it copied round 1 into the
    registry: the next tick registers round 1 and resumes from it as a new run."""
    from edgefleet.federated.flower.checkpoint import RoundRecord, save_round

    fl.seed_nodes()
    job = fl.post("/fl/jobs", fl.job_body(rounds=2)).json  # no worker: stays queued
    weights = trained_weights(digits)
    ckpt = fl.svc.work_dir / str(job["id"]) / "ckpt" / "attempt-01"
    for r in (0, 1):
        save_round(ckpt, weights, RoundRecord(r, 7, "aggregated", "fedavg", NODES, [], 10,
                                              1, 1, 1.0))
    fl.svc.update(job["id"], status="running", attempts=1, run_ids=[7])
    fake = FakeFederation(weights, NODES)
    svc = fl.svc
    svc.federation = fake  # type: ignore[assignment]
    svc.autorun = True  # what a restarted server's service does
    assert svc.tick() == []
    assert svc.wait_idle(120)
    done = fl.get(f"/fl/jobs/{job['id']}").json
    assert done["status"] == "succeeded", done["error"]
    assert [c["start-round"] for c in fake.configs] == [2]
    assert done["run_ids"] == [7, 101] and done["attempts"] == 2
    assert [(r["round"], r["run_id"]) for r in done["rounds"]] == [(0, 7), (1, 7), (2, 101)]
