"""Federated jobs through the real app (no worker, no SuperLink): roles, validation,
persistence, cancel, node registration checks, OpenAPI documentation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from tests.fleet_server.fljobs.conftest import BASE, MODEL, FlEnv
from tests.fleet_server.registry.conftest import make_onnx


def test_operator_creates_a_job_that_is_persisted_and_served(fl: FlEnv) -> None:
    fl.seed_nodes()
    rv = fl.post("/fl/jobs", fl.job_body(dp={"clipping_norm": 1.0, "noise_multiplier": 0.5},
                                         margin=-0.05, strategy="trimmed"))
    assert rv.status_code == 201, rv.json
    job = rv.json
    assert job["status"] == "queued" and job["attempts"] == 0 and job["run_ids"] == []
    assert job["model"] == MODEL and job["base_version"] == BASE
    assert job["cohort"] == sorted(fl.devices)
    assert job["spec"]["strategy"] == "trimmed" and job["spec"]["margin"] == -0.05
    assert job["spec"]["dp"] == {"clipping_norm": 1.0, "noise_multiplier": 0.5}
    assert job["rounds"] == [] and job["result_version"] is None

    shown = fl.get(f"/fl/jobs/{job['id']}")
    assert shown.status_code == 200 and shown.json["spec"] == job["spec"]
    listed = fl.get("/fl/jobs?status=queued&model=digits").json
    assert listed["total"] == 1 and listed["items"][0]["id"] == job["id"]
    assert "rounds" not in listed["items"][0]
    assert fl.get("/fl/jobs?status=failed").json["total"] == 0
    audit = fl.services.store.db.execute(
        "SELECT action FROM audit_log WHERE target_type = 'fl_job'").fetchall()
    assert [a[0] for a in audit] == ["fljob.create"]


def test_roles(fl: FlEnv) -> None:
    fl.seed_nodes()
    assert fl.client.get("/api/v1/fl/jobs").status_code == 401
    assert fl.post("/fl/jobs", fl.job_body(), role=Role.VIEWER).status_code == 403
    job = fl.post("/fl/jobs", fl.job_body()).json
    assert fl.get(f"/fl/jobs/{job['id']}", role=Role.VIEWER).status_code == 200
    assert fl.post(f"/fl/jobs/{job['id']}/cancel", {}, role=Role.VIEWER).status_code == 403
    assert fl.post("/fl/nodes", {"device_id": fl.devices[0], "public_key": "x"},
                   role=Role.VIEWER).status_code == 403


def test_cancel_a_queued_job_then_conflict(fl: FlEnv) -> None:
    fl.seed_nodes()
    job = fl.post("/fl/jobs", fl.job_body()).json
    rv = fl.post(f"/fl/jobs/{job['id']}/cancel", {"reason": "wrong cohort"})
    assert rv.status_code == 200 and rv.json["status"] == "cancelled"
    assert rv.json["finished_at"] is not None
    again = fl.post(f"/fl/jobs/{job['id']}/cancel", {})
    assert again.status_code == 409 and again.json["error"]["code"] == "conflict"
    assert fl.post("/fl/jobs/999/cancel", {}).status_code == 404
    assert fl.get("/fl/jobs/999").status_code == 404
    assert fl.get("/fl/jobs/abc").status_code == 404


def _error(fl: FlEnv, status: int, **overrides: object) -> str:
    rv = fl.post("/fl/jobs", fl.job_body(**overrides))
    assert rv.status_code == status, rv.json
    return str(rv.json["error"]["message"])


def test_validation_errors(fl: FlEnv, tmp_path: Path) -> None:
    fl.seed_nodes()
    _error(fl, 400, surprise=1)  # additionalProperties: false
    _error(fl, 400, strategy="fedsgd")
    _error(fl, 400, rounds=0)
    _error(fl, 400, every_s=5)
    assert "absolute" in _error(fl, 400, holdout="relative.npz")
    assert "either devices or group" in _error(fl, 400, cohort={"group": "lab",
                                                                "devices": [fl.devices[0]]})
    assert "name a group" in _error(fl, 400, cohort={})
    assert "exceeds" in _error(fl, 400, cohort={"devices": [fl.devices[0]]}, min_nodes=2)
    assert "cannot read" in _error(fl, 400, holdout=str(tmp_path / "missing.npz"))
    narrow = tmp_path / "narrow.npz"
    np.savez(narrow, x=np.zeros((5, 8), np.float32), y=np.zeros(5, np.int64))
    assert "8 features" in _error(fl, 400, holdout=str(narrow))
    no_y = tmp_path / "no_y.npz"
    np.savez(no_y, x=np.zeros((5, 64), np.float32))
    assert "cannot read x and y" in _error(fl, 400, holdout=str(no_y))
    _error(fl, 404, model="nope")
    _error(fl, 404, base_version="9.9")
    _error(fl, 404, cohort={"devices": ["no-such-device"]}, min_nodes=1)
    _error(fl, 404, cohort={"group": "empty-group"})
    assert "min_nodes is 4" in _error(fl, 409, min_nodes=4)
    assert "already registered" in _error(fl, 409, new_version=BASE)
    assert fl.get("/fl/jobs").json["total"] == 0


def test_a_base_version_that_is_not_a_trainable_graph_is_refused(fl: FlEnv,
                                                                 tmp_path: Path) -> None:
    fl.seed_nodes()
    path = make_onnx(tmp_path / "other.onnx")
    registry_service(fl.services).upload(MODEL, "2.0", io.BytesIO(path.read_bytes()),
                                         UploadMetadata(), SYSTEM)
    assert "not a trainable" in _error(fl, 400, base_version="2.0")


def test_only_devices_with_a_flower_node_and_not_offline_are_in_the_cohort(fl: FlEnv) -> None:
    fl.seed_nodes(fl.devices[:2])
    fl.services.store.db["ingest_presence"].insert(
        {"device_id": fl.devices[1], "state": "offline", "last_seen_at": "2026-01-01",
         "last_seen_ts": 0.0})
    assert "only 1 of the 3" in _error(fl, 409, min_nodes=2)
    job = fl.post("/fl/jobs", fl.job_body(min_nodes=1)).json
    assert job["cohort"] == [fl.devices[0]]


def test_node_registration_is_checked_before_the_superlink_is_touched(fl: FlEnv) -> None:
    bad = fl.post("/fl/nodes", {"device_id": fl.devices[0], "public_key": "not a key"})
    assert bad.status_code == 400 and "PEM" in bad.json["error"]["message"]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    unknown = fl.post("/fl/nodes", {"device_id": "ghost", "public_key": pem})
    assert unknown.status_code == 404
    fl.seed_nodes(fl.devices[:1])
    twice = fl.post("/fl/nodes", {"device_id": fl.devices[0], "public_key": pem})
    assert twice.status_code == 409
    assert fl.post("/fl/nodes", {"device_id": fl.devices[1], "public_key": pem,
                                 "extra": 1}).status_code == 400
    assert fl.get("/fl/federation").json == {"running": False}
    assert not fl.svc.federation.started


def test_the_routes_are_in_the_openapi_document(fl: FlEnv) -> None:
    doc = fl.client.get("/api/v1/openapi.json").json
    paths = doc["paths"]
    assert {"/fl/jobs", "/fl/jobs/{job_id}", "/fl/jobs/{job_id}/cancel", "/fl/nodes",
            "/fl/federation"} <= {p.removeprefix("/api/v1") for p in paths}
    create = next(v for p, v in paths.items() if p.endswith("/fl/jobs"))["post"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False and "holdout" in schema["required"]


def test_canary_is_validated_at_creation(fl: FlEnv) -> None:
    fl.seed_nodes()
    ok = {"target": {"group": "lab", "percent": 50}, "waves": [0.1, 1.0], "bake_s": 900,
          "on_failure": "rollback", "gates": {"max_install_failure_rate": 0.1}}
    rv = fl.post("/fl/jobs", fl.job_body(canary=ok))
    assert rv.status_code == 201, rv.json
    assert rv.json["spec"]["canary"] == ok
    _error(fl, 400, canary={"waves": [1.0]})  # no target
    _error(fl, 400, canary={"target": {"group": "lab"}, "version": "2.0"})  # job decides
    _error(fl, 400, canary={"target": {"group": "lab"}, "gates": {"nope": 1}})
    assert "last wave must be 1.0" in _error(fl, 400, canary={"target": {"group": "lab"},
                                                             "waves": [0.1, 0.5]})
    assert "not both" in _error(fl, 400, canary={"target": {"group": "lab",
                                                            "devices": [fl.devices[0]]}})
    assert "canary target" in _error(fl, 404, canary={"target": {"devices": ["dev-nope"]}})
    assert "canary target" in _error(fl, 404, canary={"target": {"group": "nobody"}})
