"""The registry API through Flask's test client on the real app (create_app)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role

from .conftest import ApiEnv, make_api_env, make_onnx

BASE = "/api/v1/models"


def push(api: ApiEnv, path: Path, version: str, *, role: str = "op1", name: str = "churn",
         metadata: dict[str, Any] | None = None, data: bytes | None = None) -> Any:
    form: dict[str, Any] = {
        "version": version,
        "file": (io.BytesIO(path.read_bytes() if data is None else data), "model.onnx"),
    }
    if metadata is not None:
        form["metadata"] = json.dumps(metadata)
    return api.client.post(f"{BASE}/{name}/versions", data=form, headers=api.auth(role),
                           content_type="multipart/form-data")


def stage(api: ApiEnv, version: str, target: str, role: str = "op1") -> Any:
    return api.client.post(f"{BASE}/churn/versions/{version}/stage", json={"stage": target},
                           headers=api.auth(role))


def approve(api: ApiEnv, version: str, role: str, reason: str = "eval ok") -> Any:
    return api.client.post(f"{BASE}/churn/versions/{version}/approve",
                           json={"reason": reason}, headers=api.auth(role))


def test_upload_to_production_with_approval_is_audited(api: ApiEnv, tmp_path: Path):
    model = make_onnx(tmp_path / "m.onnx")
    r = push(api, model, "1.0", metadata={"metrics": {"accuracy": 0.91},
                                          "data_digest": "sha256:abc"})
    assert r.status_code == 201, r.json
    rec = r.json
    assert rec["digest"] == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert rec["stage"] == "draft" and rec["framework"] == "onnx"
    assert rec["metrics"] == {"accuracy": 0.91}
    assert rec["lineage"] == {"data_digest": "sha256:abc"}

    assert stage(api, "1.0", "staging").status_code == 200
    refused = stage(api, "1.0", "production")
    assert refused.status_code == 409
    assert refused.json["error"]["code"] == "approval_required"
    own = approve(api, "1.0", "op1")  # four eyes: the uploader may not approve
    assert own.status_code == 403 and own.json["error"]["code"] == "approval_forbidden"
    assert approve(api, "1.0", "viewer1").status_code == 403
    ok = approve(api, "1.0", "op2", "holdout accuracy 0.91")
    assert ok.status_code == 200
    assert ok.json["approved_by_name"] == "op2-token"
    assert ok.json["approval_reason"] == "holdout accuracy 0.91" and ok.json["approved_at"]
    done = stage(api, "1.0", "production")
    assert done.status_code == 200 and done.json["stage"] == "production"

    entries, _ = api.services.audit.list(target_type="model_version", target_id="churn@1.0")
    steps = [(e["action"], (e["after"] or {}).get("stage")) for e in reversed(entries)]
    assert steps == [("model.version.upload", "draft"), ("model.version.stage", "staging"),
                     ("model.version.approve", "staging"),
                     ("model.version.stage", "production")]
    assert [e["actor"]["name"] for e in reversed(entries)] == [
        "op1-token", "op1-token", "op2-token", "op1-token"]


def test_roles_enforced(api: ApiEnv, tmp_path: Path):
    model = make_onnx(tmp_path / "m.onnx")
    assert push(api, model, "1.0", role="viewer1").status_code == 403
    assert api.client.get(BASE).status_code == 401
    assert push(api, model, "1.0").status_code == 201
    assert api.client.get(BASE, headers=api.auth("viewer1")).status_code == 200
    assert stage(api, "1.0", "staging", role="viewer1").status_code == 403
    assert stage(api, "1.0", "staging", role="admin1").status_code == 200
    assert approve(api, "1.0", "admin1").status_code == 200  # an admin approves op1's upload


def test_upload_validation(api: ApiEnv, tmp_path: Path):
    model = make_onnx(tmp_path / "m.onnx")
    garbage = push(api, model, "1.0", data=b"\x08\x01 definitely not onnx")
    assert garbage.status_code == 422 and garbage.json["error"]["code"] == "invalid_artifact"
    assert push(api, model, "1.0", name="bad name!").status_code == 400
    assert push(api, model, "../1").status_code == 400
    bad_meta = push(api, model, "1.0", metadata={"unknown": 1})
    assert bad_meta.status_code == 400
    assert api.client.post(f"{BASE}/churn/versions", json={"version": "1"},
                           headers=api.auth("op1")).status_code == 415
    assert push(api, model, "1.0").status_code == 201
    dup = push(api, model, "1.0")
    assert dup.status_code == 409 and dup.json["error"]["code"] == "version_exists"


def test_upload_size_limit(tmp_path: Path):
    env = make_api_env(tmp_path / "data", (("op1", Role.OPERATOR),), max_upload_bytes=1000)
    try:
        model = make_onnx(tmp_path / "big.onnx", n_features=64, n_out=8)
        r = push(env, model, "1")
        assert r.status_code == 413
        assert r.json["error"]["code"] == "request_too_large"
        assert push(env, make_onnx(tmp_path / "small.onnx", n_features=1, n_out=1),
                    "1").status_code == 201
    finally:
        env.services.store.close()


def test_list_filter_paginate_get_download(api: ApiEnv, tmp_path: Path):
    for i in range(3):
        assert push(api, make_onnx(tmp_path / f"m{i}.onnx", seed=i), f"1.{i}").status_code == 201
    assert stage(api, "1.1", "staging").status_code == 200
    h = api.auth("viewer1")
    page = api.client.get(f"{BASE}/churn/versions?limit=2&offset=0", headers=h).json
    assert page["total"] == 3 and page["limit"] == 2
    assert [v["version"] for v in page["items"]] == ["1.2", "1.1"]
    staged = api.client.get(f"{BASE}/churn/versions?stage=staging", headers=h).json
    assert [v["version"] for v in staged["items"]] == ["1.1"]
    assert api.client.get(f"{BASE}/churn/versions?stage=bogus", headers=h).status_code == 400
    assert api.client.get(f"{BASE}/churn/versions?limit=0", headers=h).status_code == 400
    models = api.client.get(BASE, headers=h).json
    assert models["items"][0]["name"] == "churn" and models["items"][0]["version_count"] == 3
    assert api.client.get(f"{BASE}/nope", headers=h).status_code == 404
    assert api.client.get(f"{BASE}/churn/versions/9.9", headers=h).status_code == 404
    one = api.client.get(f"{BASE}/churn/versions/1.0", headers=h).json
    blob = api.client.get(f"{BASE}/churn/versions/1.0/artifact", headers=h)
    assert blob.status_code == 200
    assert "sha256:" + hashlib.sha256(blob.data).hexdigest() == one["digest"]


def test_compare_and_lineage(api: ApiEnv, tmp_path: Path):
    push(api, make_onnx(tmp_path / "a.onnx"), "1.0", metadata={"metrics": {"acc": 0.8},
                                                               "code_version": "git:abc"})
    push(api, make_onnx(tmp_path / "b.onnx", seed=3), "1.1",
         metadata={"metrics": {"acc": 0.9}, "parent": "1.0", "training_run": "run-7"})
    push(api, make_onnx(tmp_path / "c.onnx", n_features=3), "2.0")
    h = api.auth("viewer1")
    cmp = api.client.get(f"{BASE}/churn/versions/1.0/compare?with=1.1", headers=h).json
    assert abs(cmp["metrics"]["acc"]["delta"] - 0.1) < 1e-9
    assert cmp["signature"]["compatible"] is True
    assert cmp["size_bytes"]["a"] > 0
    other = api.client.get(f"{BASE}/churn/versions/1.0/compare?with=churn@2.0", headers=h).json
    assert other["signature"]["compatible"] is False
    assert api.client.get(f"{BASE}/churn/versions/1.0/compare", headers=h).status_code == 400
    assert api.client.get(f"{BASE}/churn/versions/1.0/compare?with=7.7",
                          headers=h).status_code == 404
    graph = api.client.get(f"{BASE}/churn/versions/1.1/lineage", headers=h).json
    edges = {(e["from"], e["to"], e["relation"]) for e in graph["edges"]}
    assert ("version:churn@1.0", "version:churn@1.1", "parent_of") in edges
    assert ("training_run:run-7", "version:churn@1.1", "produced_by") in edges
    assert ("code:git:abc", "version:churn@1.0", "built_from") in edges


def test_every_registry_route_is_in_openapi(api: ApiEnv):
    doc = api.client.get("/api/v1/openapi.json").json
    rules = [r for r in api.app.url_map.iter_rules() if r.endpoint.startswith("registry.")]
    assert len(rules) >= 9
    for rule in rules:
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], (path, method)
    upload = doc["paths"]["/api/v1/models/{name}/versions"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert upload["x-required-role"] == "operator"


def test_unstorable_text_is_a_client_error(api: ApiEnv, tmp_path: Path):
    model = make_onnx(tmp_path / "m.onnx")
    bad = push(api, model, "1.0", metadata={"description": "\udc00"})
    assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_metadata"
    assert push(api, model, "1.0").status_code == 201
    r = api.client.post(f"{BASE}/churn/versions/1.0/stage", data='{"stage": "staging", '
                        '"reason": "\\ud800"}', headers={**api.auth("op1"),
                                                          "Content-Type": "application/json"})
    assert r.status_code == 400


def test_four_eyes_follow_the_user_not_the_token(api: ApiEnv, tmp_path: Path):
    assert push(api, make_onnx(tmp_path / "m.onnx"), "1.0").status_code == 201
    assert stage(api, "1.0", "staging").status_code == 200
    _, second = api.services.tokens.create(SYSTEM, name="op1-other", role=Role.OPERATOR,
                                           user_id=api.user_ids["op1"],
                                           owner_role=Role.OPERATOR)
    r = api.client.post(f"{BASE}/churn/versions/1.0/approve", json={"reason": "me again"},
                        headers={"Authorization": f"Bearer {second}"})
    assert r.status_code == 403 and r.json["error"]["code"] == "approval_forbidden"


# -- review regressions ------------------------------------------------------------------


def _push_raw_metadata(api: ApiEnv, path: Path, version: str, metadata: str) -> Any:
    form = {"version": version, "metadata": metadata,
            "file": (io.BytesIO(path.read_bytes()), "model.onnx")}
    return api.client.post(f"{BASE}/churn/versions", data=form, headers=api.auth("op1"),
                           content_type="multipart/form-data")


def test_hostile_metadata_is_a_400(api: ApiEnv, tmp_path: Path):
    """C1/C3: deep nesting gave a 500; NaN/1e999 metrics were stored as invalid JSON."""
    model = make_onnx(tmp_path / "m.onnx")
    for i, raw in enumerate((
        '{"metrics": {"accuracy": NaN}}', '{"metrics": {"accuracy": 1e999}}',
        '{"reference_profile": {"x": [Infinity]}}',
        '{"reference_profile": ' + "[" * 600 + "]" * 600 + "}",
        '{"reference_profile": ' + "[" * 100_000 + "]" * 100_000 + "}",
    )):
        r = _push_raw_metadata(api, model, f"1.{i}", raw)
        assert r.status_code == 400, (raw[:60], r.json)
        assert r.json["error"]["code"] == "invalid_metadata"
    assert api.client.get(f"{BASE}/churn/versions", headers=api.auth("op1")).status_code == 404


def test_upload_errors_do_not_reveal_server_paths(api: ApiEnv, tmp_path: Path):
    model = make_onnx(tmp_path / "m.onnx")
    data_dir = str(api.services.config.data_dir)
    for data in (b"\x08\x01 definitely not onnx", b"TFL3" * 64, model.read_bytes()[:40]):
        r = push(api, model, "1.0", data=data)
        assert r.status_code == 422, r.json
        text = r.get_data(as_text=True)
        assert data_dir not in text and ".upload-" not in text and "/tmp" not in text, text


def test_admin_self_approval_needs_the_setting(tmp_path: Path):
    """C4 through the API: four eyes for admins too, unless the setting is off."""
    model = make_onnx(tmp_path / "m.onnx")
    strict = make_api_env(tmp_path / "strict", (("admin1", Role.ADMIN),))
    solo = make_api_env(tmp_path / "solo", (("admin1", Role.ADMIN),),
                        approval_requires_second_person=False)
    try:
        for env, expected in ((strict, 403), (solo, 200)):
            assert push(env, model, "1.0", role="admin1").status_code == 201
            assert stage(env, "1.0", "staging", role="admin1").status_code == 200
            assert approve(env, "1.0", "admin1").status_code == expected
    finally:
        strict.services.store.close()
        solo.services.store.close()
