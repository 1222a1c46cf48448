"""Round checkpoints in the registry (``registry.checkpoints``): what a job leaves there,
how the registry API serves it, and that a checkpoint can never become a release."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtime import load_model
from edgefleet.federated.models import from_onnx
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.registry.api import checkpoint_service, registry_service
from edgefleet.fleet_server.registry.checkpoints import CheckpointConflictError
from edgefleet.fleet_server.registry.errors import InvalidMetadataError, NotFoundError
from edgefleet.fleet_server.rollouts.errors import RolloutInvalid
from edgefleet.fleet_server.rollouts.service import rollout_service
from tests.federated.conftest import DigitsSplit
from tests.fleet_server.fljobs.conftest import (
    BASE,
    MODEL,
    FakeFederation,
    FlEnv,
    base_onnx,
    make_fl_env,
    trained_weights,
)

NODES = [1000, 1001, 1002]


@pytest.fixture
def done(tmp_path: Path, digits: DigitsSplit) -> Iterator[tuple[FlEnv, dict]]:
    """A job that succeeded after 3 rounds in two Flower runs."""
    env = make_fl_env(tmp_path, digits, autorun=True)
    env.seed_nodes()
    env.svc.federation = FakeFederation(trained_weights(digits), NODES,  # type: ignore[assignment]
                                        fail_after=[2, None])
    rv = env.post("/fl/jobs", env.job_body(rounds=3))
    assert rv.status_code == 201 and env.svc.wait_idle(120)
    job = env.get(f"/fl/jobs/{rv.json['id']}").json
    assert job["status"] == "succeeded", job["error"]
    yield env, job
    env.svc.close()
    env.services.store.close()


def test_every_round_is_a_registry_checkpoint_served_by_the_api(
    done: tuple[FlEnv, dict], digits: DigitsSplit
) -> None:
    env, job = done
    run = f"fljob:{job['id']}"
    listed = env.get(f"/models/{MODEL}/checkpoints?run={run}").json
    assert listed["total"] == 3
    assert [c["round"] for c in listed["items"]] == [3, 2, 1]
    first, second = job["run_ids"]
    one = env.get(f"/models/{MODEL}/checkpoints/{run}/1").json
    assert one["parent"] == f"{MODEL}@{BASE}" and one["framework"] == "onnx"
    assert one["lineage"] == {"training_run": run, "federated_round": "1",
                              "fl_job": str(job["id"]), "flower_run": str(first),
                              "base_version": BASE}
    assert one["metrics"]["examples"] == 300 and one["metrics"]["failed"] == 1
    assert env.get(f"/models/{MODEL}/checkpoints/{run}/3").json["lineage"][
        "flower_run"] == str(second)
    rv = env.get(f"/models/{MODEL}/checkpoints/{run}/3/artifact")
    assert rv.status_code == 200 and rv.headers["Content-Disposition"].endswith(
        f"{MODEL}-fljob-{job['id']}-r0003.onnx")
    weights = from_onnx(rv.data).weights()
    for name, value in trained_weights(digits).items():
        np.testing.assert_array_equal(weights[name], value)
    path = env.base / "r3.onnx"
    path.write_bytes(rv.data)
    with load_model(path) as runner:  # the deployed graph: runs in the agent runtime
        assert runner.predict(digits.x_test[:5])["label"].shape == (5,)
    # the accepted result is exactly the last checkpoint, and says so
    version = registry_service(env.services).get_version(MODEL, job["result_version"])
    assert version["digest"] == env.get(f"/models/{MODEL}/checkpoints/{run}/3").json["digest"]
    assert version["lineage"]["checkpoint"] == f"{run}#3"
    assert env.get(f"/models/{MODEL}/checkpoints/{run}/4").status_code == 404
    assert env.get(f"/models/{MODEL}/checkpoints/{run}/x1").status_code == 404
    assert env.get("/models/nope/checkpoints").status_code == 404


def test_a_checkpoint_is_not_a_version_and_cannot_be_rolled_out(
    done: tuple[FlEnv, dict]
) -> None:
    env, job = done
    versions = [v["version"] for v in registry_service(env.services).list_versions(MODEL)[0]]
    assert sorted(versions) == sorted([BASE, job["result_version"],
                                       f"{job['result_version']}-int8"])
    with pytest.raises(RolloutInvalid, match="no registered version"):
        rollout_service(env.services).release_target(MODEL, f"fljob:{job['id']}#3")
    rv = env.post("/rollouts", {"model": MODEL, "version": f"fljob-{job['id']}-r0003",
                                "target": {"group": "lab"}})
    assert rv.status_code == 404, rv.json
    assert "no registered version" in rv.json["error"]["message"]


def test_checkpoints_are_immutable(done: tuple[FlEnv, dict]) -> None:
    env, job = done
    checkpoints = checkpoint_service(env.services)
    run = f"fljob:{job['id']}"
    path = checkpoints.path(checkpoints.get(MODEL, run, 1))
    # the same bytes again: the existing record; other bytes: a conflict
    with path.open("rb") as f:
        again = checkpoints.add(MODEL, run, 1, f, parent_version=BASE, actor=SYSTEM)
    assert again["id"] == checkpoints.get(MODEL, run, 1)["id"]
    with pytest.raises(CheckpointConflictError):
        checkpoints.add(MODEL, run, 1, io.BytesIO(base_onnx()), parent_version=BASE,
                        actor=SYSTEM)
    with pytest.raises(InvalidMetadataError):
        checkpoints.add(MODEL, run, 9, io.BytesIO(base_onnx()), parent_version="9.9",
                        actor=SYSTEM)
    with pytest.raises(NotFoundError):
        checkpoints.get(MODEL, run, 9)
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        env.services.store.db.execute("UPDATE registry_checkpoints SET round = 7")
