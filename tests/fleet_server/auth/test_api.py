"""The auth blueprint through Flask's client: tokens, users, whoami, audit trail."""

from __future__ import annotations

from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from tests.fleet_server.support import ROLES, Env


def test_whoami(env: Env) -> None:
    rv = env.client.get("/api/v1/auth/whoami", headers=env.auth(Role.OPERATOR))
    assert rv.status_code == 200
    assert rv.json["actor"]["kind"] == "token" and rv.json["actor"]["role"] == "operator"
    assert rv.json["user"]["username"] == "operator1" and rv.json["auth"] == "token"
    assert "csrf_token" not in rv.json


def test_token_lifecycle_through_api(env: Env) -> None:
    headers = env.auth(Role.OPERATOR)
    session, csrf = env.login(Role.OPERATOR)  # tokens are created from a console session
    rv = session.post("/api/v1/tokens", headers={"X-CSRF-Token": csrf},
                      json={"name": "ci", "scopes": ["read"], "ttl_s": 3600})
    assert rv.status_code == 201
    secret, token = rv.json["secret"], rv.json["token"]
    assert token["role"] == "operator" and token["scopes"] == ["read"]
    assert token["expires_at"] is not None and "token_hash" not in token
    new = {"Authorization": f"Bearer {secret}"}
    assert env.client.get("/api/v1/auth/whoami", headers=new).status_code == 200
    listed = env.client.get("/api/v1/tokens", headers=headers).json
    assert {t["id"] for t in listed["items"]} == {token["id"], env.token_ids[Role.OPERATOR]}
    assert secret not in str(listed)
    got = env.client.get(f"/api/v1/tokens/{token['id']}", headers=headers)
    assert got.status_code == 200 and secret not in got.get_data(as_text=True)
    assert env.client.delete(f"/api/v1/tokens/{token['id']}", headers=headers).status_code == 200
    assert env.client.get("/api/v1/auth/whoami", headers=new).status_code == 401


def test_tokens_cannot_exceed_own_role(env: Env) -> None:
    rv = env.client.post("/api/v1/tokens", headers=env.auth(Role.OPERATOR),
                         json={"name": "escalate", "role": "admin"})
    assert rv.status_code == 403


def test_others_tokens_are_invisible_to_non_admins(env: Env) -> None:
    admin_token = env.token_ids[Role.ADMIN]
    viewer = env.auth(Role.VIEWER)
    assert env.client.get(f"/api/v1/tokens/{admin_token}", headers=viewer).status_code == 404
    assert env.client.delete(f"/api/v1/tokens/{admin_token}", headers=viewer).status_code == 404
    assert env.client.get("/api/v1/tokens?user_id=" + env.user_ids[Role.ADMIN],
                          headers=viewer).json["total"] == 1  # still only their own
    everyone = env.client.get("/api/v1/tokens", headers=env.auth(Role.ADMIN)).json
    assert everyone["total"] == 3
    mine = env.client.get("/api/v1/tokens?user_id=" + env.user_ids[Role.VIEWER],
                          headers=env.auth(Role.ADMIN)).json
    assert mine["total"] == 1


def test_user_administration(env: Env) -> None:
    admin = env.auth(Role.ADMIN)
    rv = env.client.post("/api/v1/users", headers=admin,
                         json={"username": "frank", "role": "operator"})
    assert rv.status_code == 201
    user, one_time = rv.json["user"], rv.json["one_time_password"]
    assert user["must_change_password"] is True and len(one_time) >= 16
    dup = env.client.post("/api/v1/users", headers=admin,
                          json={"username": "frank", "role": "viewer"})
    assert dup.status_code == 409 and dup.json["error"]["code"] == "conflict"
    login = env.client.post("/api/v1/auth/login",
                            json={"username": "frank", "password": one_time})
    assert login.status_code == 200
    rv = env.client.patch(f"/api/v1/users/{user['id']}", headers=admin, json={"role": "viewer"})
    assert rv.status_code == 200 and rv.json["role"] == "viewer"
    rv = env.client.patch(f"/api/v1/users/{user['id']}", headers=admin, json={"disabled": True})
    assert rv.json["disabled"] is True
    assert env.client.post("/api/v1/auth/login", json={"username": "frank",
                                                       "password": one_time}).status_code == 401
    assert env.client.patch(f"/api/v1/users/{user['id']}", headers=admin,
                            json={}).status_code == 400
    assert env.client.get("/api/v1/users/u_missing", headers=admin).status_code == 404
    listed = env.client.get("/api/v1/users?role=viewer", headers=admin).json
    assert {u["username"] for u in listed["items"]} == {"viewer1", "frank"}
    assert "password_hash" not in str(listed)


def test_last_admin_cannot_be_demoted_via_api(env: Env) -> None:
    admin = env.auth(Role.ADMIN)
    first = env.client.get("/api/v1/users?role=admin", headers=admin).json["items"]
    other = next(u for u in first if u["username"] == "admin")
    assert env.client.patch(f"/api/v1/users/{other['id']}", headers=admin,
                            json={"disabled": True}).status_code == 200
    rv = env.client.patch(f"/api/v1/users/{env.user_ids[Role.ADMIN]}", headers=admin,
                          json={"role": "operator"})
    assert rv.status_code == 409


def test_every_change_lands_in_the_audit_log(env: Env) -> None:
    admin = env.auth(Role.ADMIN)
    user = env.client.post("/api/v1/users", headers=admin,
                           json={"username": "gina", "role": "viewer"}).json["user"]
    env.client.patch(f"/api/v1/users/{user['id']}", headers=admin, json={"role": "operator"})
    session, csrf = env.login(Role.ADMIN)
    token = session.post("/api/v1/tokens", headers={"X-CSRF-Token": csrf},
                         json={"name": "t"}).json["token"]
    env.client.delete(f"/api/v1/tokens/{token['id']}", headers=admin)
    log = env.client.get("/api/v1/audit?limit=4", headers=env.auth(Role.OPERATOR)).json
    assert [e["action"] for e in log["items"]] == [
        "token.revoke", "token.create", "user.update", "user.create"]
    update = log["items"][2]
    assert update["actor"]["id"] == env.token_ids[Role.ADMIN]
    assert update["actor"]["kind"] == "token" and update["target_id"] == user["id"]
    assert update["before"]["role"] == "viewer" and update["after"]["role"] == "operator"
    filtered = env.client.get(f"/api/v1/audit?target_id={user['id']}",
                              headers=env.auth(Role.OPERATOR)).json
    assert filtered["total"] == 2
    since = env.client.get("/api/v1/audit?since=2999-01-01T00:00:00Z",
                           headers=env.auth(Role.OPERATOR)).json
    assert since["total"] == 0
    bad = env.client.get("/api/v1/audit?since=yesterday", headers=env.auth(Role.OPERATOR))
    assert bad.status_code == 400


# -- review regressions ------------------------------------------------------------------


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_api_tokens_cannot_mint_tokens(env: Env) -> None:
    """S1: a token could mint a stronger, longer-lived child that outlived its revocation."""
    _, ownerless = env.services.tokens.create(SYSTEM, name="root", role=Role.ADMIN,
                                              user_id=None, owner_role=None, ttl_s=3600)
    for headers in (*(env.auth(role) for role in ROLES), _bearer(ownerless)):
        rv = env.client.post("/api/v1/tokens", headers=headers,
                             json={"name": "child", "scopes": ["read", "write"],
                                   "ttl_s": 10 * 365 * 24 * 3600})
        assert rv.status_code == 403, rv.json
        assert rv.json["error"]["code"] == "forbidden"
    assert env.client.get("/api/v1/tokens", headers=env.auth(Role.ADMIN)).json["total"] == 4
    client, csrf = env.login(Role.OPERATOR)  # a console session still creates tokens
    rv = client.post("/api/v1/tokens", headers={"X-CSRF-Token": csrf}, json={"name": "ci"})
    assert rv.status_code == 201 and rv.json["token"]["role"] == "operator"


def test_ownerless_viewer_token_cannot_touch_ownerless_tokens(env: Env) -> None:
    """S3: None == None let an owner-less viewer token read and revoke owner-less tokens."""
    admin_token, _ = env.services.tokens.create(SYSTEM, name="root", role=Role.ADMIN,
                                                user_id=None, owner_role=None)
    _, viewer = env.services.tokens.create(SYSTEM, name="ro", role=Role.VIEWER,
                                           user_id=None, owner_role=None)
    headers = _bearer(viewer)
    assert env.client.get(f"/api/v1/tokens/{admin_token.id}", headers=headers).status_code == 404
    rv = env.client.delete(f"/api/v1/tokens/{admin_token.id}", headers=headers)
    assert rv.status_code == 404
    assert env.services.tokens.get(admin_token.id).revoked_at is None
    assert env.client.get("/api/v1/tokens", headers=headers).json["total"] == 0


def test_audit_time_filter_out_of_range_is_a_400(env: Env) -> None:
    """C2: astimezone overflowed (500) for times at the ends of the datetime range."""
    headers = env.auth(Role.OPERATOR)
    for query in ("since=9999-12-31T23:59:59-01:00", "until=0001-01-01T00:00:00%2B01:00"):
        rv = env.client.get(f"/api/v1/audit?{query}", headers=headers)
        assert rv.status_code == 400, (query, rv.json)
        assert rv.json["error"]["code"] == "invalid_parameter"
