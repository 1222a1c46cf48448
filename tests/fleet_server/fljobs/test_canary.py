"""The optional canary rollout of an accepted federated result, with the real update
repositories (TUF keys), the real release build and publication, and the real rollouts
service; the Flower runs are injected (``FakeFederation``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.updates import keys_dir, repo_dir
from edgefleet.fleet_server.updates.keys import init_keys
from edgefleet.fleet_server.updates.repository import Repository
from tests.federated.conftest import DigitsSplit
from tests.fleet_server.fljobs.conftest import (
    GROUP,
    MODEL,
    FakeFederation,
    FlEnv,
    make_fl_env,
    trained_weights,
)

NODES = [1000, 1001, 1002]
CANARY = {"target": {"group": GROUP}, "waves": [0.34, 1.0], "bake_s": 600}


def _env(base: Path, digits: DigitsSplit, *, offline_targets_key: bool) -> FlEnv:
    env = make_fl_env(base, digits, autorun=True)
    env.seed_nodes()
    offline = base / "offline-keys" if offline_targets_key else None
    Repository(repo_dir(env.services), init_keys(keys_dir(env.services), offline)).initialise()
    return env


@pytest.fixture
def online(tmp_path: Path, digits: DigitsSplit) -> Iterator[FlEnv]:
    """Every signing key on the server: the job can publish the release itself."""
    env = _env(tmp_path, digits, offline_targets_key=False)
    yield env
    env.svc.close()
    env.services.store.close()


@pytest.fixture
def offline(tmp_path: Path, digits: DigitsSplit) -> Iterator[FlEnv]:
    """The image targets key kept offline (``keys init --offline-dir``)."""
    env = _env(tmp_path, digits, offline_targets_key=True)
    yield env
    env.svc.close()
    env.services.store.close()


def _run(env: FlEnv, digits: DigitsSplit, **overrides: Any) -> dict[str, Any]:
    env.svc.federation = FakeFederation(trained_weights(digits), NODES)  # type: ignore[assignment]
    rv = env.post("/fl/jobs", env.job_body(canary=CANARY, **overrides))
    assert rv.status_code == 201, rv.json
    assert rv.json["spec"]["canary"] == CANARY
    assert env.svc.wait_idle(120)
    return dict(env.get(f"/fl/jobs/{rv.json['id']}").json)


def _audit(env: FlEnv, action: str) -> list[dict[str, Any]]:
    return list(env.services.store.db["audit_log"].rows_where("action = ?", [action]))


def test_an_accepted_result_is_published_and_rolled_out_as_a_canary(
    online: FlEnv, digits: DigitsSplit
) -> None:
    job = _run(online, digits)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    int8 = result["int8_version"]
    canary = result["canary"]
    assert canary["created"] is True and canary["version"] == int8, canary
    assert result["release"]["target"] == f"{MODEL}-{int8}.tar"

    rollout = online.get(f"/rollouts/{canary['rollout_id']}").json
    assert rollout["model"] == MODEL and rollout["version"] == int8
    assert rollout["target"] == f"{MODEL}-{int8}.tar" and rollout["status"] == "running"
    assert rollout["spec"]["fractions"] == [0.34, 1.0] and rollout["spec"]["bake_s"] == 600
    assert rollout["devices"] == len(online.devices)
    assert rollout["created_by"] == f"system:fljob:{job['id']}"

    registry = registry_service(online.services)
    record = registry.get_version(MODEL, int8)
    assert record["stage"] == "staging" and record["parent"] == f"{MODEL}@{result['version']}"
    assert record["lineage"]["bundle"] == f"{MODEL}-{int8}.tar"
    assert record["lineage"]["training_run"] == f"fljob:{job['id']}"
    assert registry.get_version(MODEL, result["version"])["stage"] == "draft"
    assert len(_audit(online, "fljob.canary")) == 1
    assert len(_audit(online, "release.publish")) == 1


def test_a_rejected_result_creates_no_canary(online: FlEnv, digits: DigitsSplit) -> None:
    job = _run(online, digits, margin=0.99)
    assert job["status"] == "rejected" and "canary" not in job["result"]
    assert online.get("/rollouts").json["items"] == []
    assert _audit(online, "fljob.canary") == []


def test_an_offline_targets_key_records_why_no_canary_was_created(
    offline: FlEnv, digits: DigitsSplit
) -> None:
    job = _run(offline, digits)
    assert job["status"] == "succeeded", job["error"]
    canary = job["result"]["canary"]
    assert canary["created"] is False
    assert canary["reason"].startswith("canary not created: the release cannot be published")
    assert "image targets key is not available" in canary["reason"], canary
    assert offline.get("/rollouts").json["items"] == []
    # the int8 version is registered all the same (a draft, as without a canary)
    int8 = registry_service(offline.services).get_version(MODEL,
                                                          job["result"]["int8_version"])
    assert int8["stage"] == "draft" and int8["quantization"] == "dynamic-int8"
    assert len(_audit(offline, "fljob.canary")) == 1
