"""The devices API through Flask's test client on the real app (create_app)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from .conftest import ApiEnv, make_api_env, new_public_key

V1 = "/api/v1"


def new_token(api: ApiEnv, **body: Any) -> str:
    r = api.client.post(f"{V1}/enrollment-tokens", json=body, headers=api.auth("operator"))
    assert r.status_code == 201, r.json
    return str(r.json["token"])


def enroll(api: ApiEnv, token: str, key: str | None = None) -> Any:
    return api.client.post(f"{V1}/enroll", json={"token": token,
                                                 "public_key": key or new_public_key(),
                                                 "hardware": {"hostname": "cam"}})


def test_enroll_returns_credentials_once_and_refuses_reuse(api: ApiEnv):
    token = new_token(api, ttl_s=600)
    r = enroll(api, token)
    assert r.status_code == 201, r.json
    body = r.json
    assert body["device_id"].startswith("dev-")
    assert body["broker"]["username"] == body["device_id"]
    assert body["broker"]["url"] == api.services.broker_url
    assert len(body["broker"]["password"]) >= 40
    assert body["update_root"] is None  # no update repositories before keys init
    assert r.headers["Cache-Control"] == "no-store"
    devices_svc = api.services.extras["devices"]
    assert devices_svc.verify_broker_password(body["device_id"], body["broker"]["password"])

    again = enroll(api, token)
    assert again.status_code == 409 and again.json["error"]["code"] == "token_used"
    forged = enroll(api, token[:-3] + "abc")
    assert forged.status_code == 401 and forged.json["error"]["code"] == "token_invalid"
    assert enroll(api, "").status_code == 400
    assert api.client.post(f"{V1}/enroll", json={"token": token}).status_code == 400

    # the secrets never show up in reads or the audit log
    h = api.auth("admin")
    dumps = json.dumps(api.client.get(f"{V1}/devices", headers=h).json)
    dumps += json.dumps(api.client.get(f"{V1}/enrollment-tokens", headers=h).json)
    dumps += json.dumps(api.services.audit.list(limit=500)[0])
    assert body["broker"]["password"] not in dumps and token not in dumps


def test_revoked_token_is_gone(api: ApiEnv):
    token = new_token(api)
    tid = api.client.get(f"{V1}/enrollment-tokens?active=true",
                         headers=api.auth("operator")).json["items"][0]["id"]
    r = api.client.post(f"{V1}/enrollment-tokens/{tid}/revoke", headers=api.auth("operator"))
    assert r.status_code == 200 and r.json["revoked_at"]
    refused = enroll(api, token)
    assert refused.status_code == 410 and refused.json["error"]["code"] == "token_revoked"
    assert api.client.post(f"{V1}/enrollment-tokens/et-none/revoke",
                           headers=api.auth("operator")).status_code == 404


def test_roles(api: ApiEnv):
    assert api.client.post(f"{V1}/enrollment-tokens", json={},
                           headers=api.auth("viewer")).status_code == 403
    assert api.client.get(f"{V1}/enrollment-tokens",
                          headers=api.auth("viewer")).status_code == 403
    assert api.client.post(f"{V1}/enrollment-tokens", json={}).status_code == 401
    device_id = enroll(api, new_token(api)).json["device_id"]
    assert api.client.get(f"{V1}/devices/{device_id}",
                          headers=api.auth("viewer")).status_code == 200
    for method, path, body in (
        ("post", f"/devices/{device_id}/decommission", {}),
        ("patch", f"/devices/{device_id}", {"name": "x"}),
        ("put", f"/devices/{device_id}/tags", {"tags": []}),
        ("post", "/device-groups", {"name": "g"}),
    ):
        r = getattr(api.client, method)(V1 + path, json=body, headers=api.auth("viewer"))
        assert r.status_code == 403, (method, path)


def test_groups_tags_list_and_decommission(api: ApiEnv):
    op = api.auth("operator")
    assert api.client.post(f"{V1}/device-groups", json={"name": "lobby"},
                           headers=op).status_code == 201
    assert api.client.post(f"{V1}/device-groups", json={"name": "lobby"},
                           headers=op).status_code == 409
    in_group = enroll(api, new_token(api, group="lobby")).json
    assert in_group["group"] == "lobby"
    other = enroll(api, new_token(api)).json["device_id"]
    r = api.client.put(f"{V1}/devices/{other}/tags", json={"tags": ["floor=2"]}, headers=op)
    assert r.status_code == 200 and r.json["tags"] == ["floor=2"]
    assert api.client.put(f"{V1}/devices/{other}/tags", json={"tags": ["no way"]},
                          headers=op).status_code == 400
    h = api.auth("viewer")
    lobby = api.client.get(f"{V1}/devices?group=lobby", headers=h).json
    assert [d["id"] for d in lobby["items"]] == [in_group["device_id"]]
    assert api.client.get(f"{V1}/devices?tag=floor=2", headers=h).json["total"] == 1
    assert api.client.get(f"{V1}/devices?status=nope", headers=h).status_code == 400
    assert api.client.get(f"{V1}/device-tags", headers=h).json["items"] == [
        {"tag": "floor=2", "device_count": 1}]
    moved = api.client.patch(f"{V1}/devices/{other}", json={"group": "lobby", "name": "cam-9"},
                             headers=op).json
    assert moved["group"] == "lobby" and moved["name"] == "cam-9"
    cleared = api.client.patch(f"{V1}/devices/{other}", json={"group": None}, headers=op).json
    assert cleared["group"] is None
    assert api.client.get(f"{V1}/device-groups/lobby", headers=h).json["device_count"] == 1

    dead = api.client.post(f"{V1}/devices/{other}/decommission", json={"reason": "broken"},
                           headers=op)
    assert dead.status_code == 200 and dead.json["status"] == "decommissioned"
    assert api.broker.dropped == [other]
    assert api.client.post(f"{V1}/devices/{other}/decommission", json={},
                           headers=op).status_code == 409
    assert api.client.get(f"{V1}/devices/dev-nope", headers=h).status_code == 404
    active = api.client.get(f"{V1}/devices?status=active", headers=h).json
    assert [d["id"] for d in active["items"]] == [in_group["device_id"]]


def test_expired_token_over_api(tmp_path):
    env = make_api_env(tmp_path / "data")
    try:
        token = new_token(env, ttl_s=1)
        # age the token in the database rather than sleeping
        past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
        env.services.store.db.execute("UPDATE enrollment_tokens SET expires_at = ?", [past])
        r = enroll(env, token)
        assert r.status_code == 410 and r.json["error"]["code"] == "token_expired"
    finally:
        env.services.store.close()


def test_every_devices_route_is_in_openapi(api: ApiEnv):
    doc = api.client.get(f"{V1}/openapi.json").json
    rules = [r for r in api.app.url_map.iter_rules() if r.endpoint.startswith("devices.")]
    assert len(rules) >= 10
    for rule in rules:
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], (path, method)
    enroll_op = doc["paths"]["/api/v1/enroll"]["post"]
    assert enroll_op["security"] == []
    assert {"401", "409", "410"} <= set(enroll_op["responses"])


def test_unstorable_text_is_a_client_error(api: ApiEnv):
    op = {**api.auth("operator"), "Content-Type": "application/json"}
    for path, body in (("/enrollment-tokens", '{"note": "\\ud800"}'),
                       ("/device-groups", '{"name": "g", "description": "\\udfff"}'),
                       ("/enroll", '{"token": "eft_\\ud800", "public_key": "x"}')):
        r = api.client.post(V1 + path, data=body, headers=op)
        assert r.status_code == 400, (path, r.json)


def test_enroll_hands_out_both_update_roots_once_keys_exist(api: ApiEnv):
    from edgefleet.fleet_server.updates.keys import init_keys
    from edgefleet.fleet_server.updates.repository import Repository

    data_dir = api.services.config.data_dir
    Repository(data_dir / "repo", init_keys(data_dir / "keys")).initialise()
    r = enroll(api, new_token(api, ttl_s=600))
    assert r.status_code == 201, r.json
    roots = r.json["update_root"]
    image = json.loads((data_dir / "repo/image/metadata/root.json").read_text())
    director = json.loads((data_dir / "repo/director/root/root.json").read_text())
    assert roots == {"image": image, "director": director}
    assert roots["image"]["signed"]["_type"] == "root"
    assert roots["image"]["signed"]["roles"]["root"]["threshold"] == 2
