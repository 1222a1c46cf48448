"""How ``route`` authenticates: bearer tokens (expiry, revocation, scopes, owner state)
and console sessions (cookie flags, CSRF, epochs, forced password change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role, Scope
from tests.fleet_server.support import PASSWORD, Env, make_env


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_expired_token_refused(env: Env) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    _, secret = env.services.tokens.create(SYSTEM, name="old", role=Role.ADMIN, user_id=None,
                                           owner_role=None, ttl_s=3600, now=past)
    rv = env.client.get("/api/v1/auth/whoami", headers=_bearer(secret))
    assert rv.status_code == 401 and rv.json["error"]["code"] == "unauthorized"


def test_revoked_token_refused_immediately(env: Env) -> None:
    headers = env.auth(Role.OPERATOR)
    assert env.client.get("/api/v1/auth/whoami", headers=headers).status_code == 200
    rv = env.client.delete(f"/api/v1/tokens/{env.token_ids[Role.OPERATOR]}", headers=headers)
    assert rv.status_code == 200 and rv.json["revoked_at"]
    assert env.client.get("/api/v1/auth/whoami", headers=headers).status_code == 401


def test_read_scope_cannot_write(env: Env) -> None:
    _, secret = env.services.tokens.create(SYSTEM, name="ro", role=Role.ADMIN, user_id=None,
                                           owner_role=None, scopes=[Scope.READ])
    assert env.client.get("/api/v1/users", headers=_bearer(secret)).status_code == 200
    rv = env.client.post("/api/v1/users", json={"username": "x", "role": "viewer"},
                         headers=_bearer(secret))
    assert rv.status_code == 403 and rv.json["error"]["code"] == "insufficient_scope"


def test_token_follows_its_owner(env: Env) -> None:
    admin_id = env.user_ids[Role.ADMIN]
    headers = env.auth(Role.ADMIN)
    env.services.users.update(SYSTEM, admin_id, role=Role.VIEWER)
    assert env.client.get("/api/v1/users", headers=headers).status_code == 403
    assert env.client.get("/api/v1/auth/whoami", headers=headers).json["actor"]["role"] == "viewer"
    env.services.users.update(SYSTEM, admin_id, disabled=True)
    assert env.client.get("/api/v1/auth/whoami", headers=headers).status_code == 401


def test_session_cookie_flags_default_secure(tmp_path: Path) -> None:
    environment = make_env(tmp_path / "data", session_cookie_secure=True)
    client = environment.app.test_client()
    rv = client.post("/api/v1/auth/login",
                     json={"username": "viewer1", "password": PASSWORD},
                     base_url="https://localhost")
    cookie = rv.headers["Set-Cookie"]
    for flag in ("Secure", "HttpOnly", "SameSite=Strict"):
        assert flag in cookie
    environment.services.store.close()


def test_session_requires_csrf_on_writes(env: Env) -> None:
    client, csrf = env.login(Role.ADMIN)
    assert client.get("/api/v1/users").status_code == 200
    body = {"username": "newbie", "role": "viewer"}
    rv = client.post("/api/v1/users", json=body)
    assert rv.status_code == 403 and rv.json["error"]["code"] == "csrf_failed"
    rv = client.post("/api/v1/users", json=body, headers={"X-CSRF-Token": "wrong"})
    assert rv.status_code == 403
    rv = client.post("/api/v1/users", json=body, headers={"X-CSRF-Token": csrf})
    assert rv.status_code == 201
    _, other_csrf = env.login(Role.ADMIN, env.app.test_client())
    rv = client.post("/api/v1/users", json={"username": "n2", "role": "viewer"},
                     headers={"X-CSRF-Token": other_csrf})
    assert rv.status_code == 403, "another session's CSRF token must not work"


def test_session_roles_enforced(env: Env) -> None:
    client, _ = env.login(Role.VIEWER)
    assert client.get("/api/v1/users").status_code == 403
    assert client.get("/api/v1/audit").status_code == 403
    assert client.get("/api/v1/tokens").status_code == 200


def test_logout_ends_every_session_of_the_user(env: Env) -> None:
    first, csrf = env.login(Role.OPERATOR)
    second, _ = env.login(Role.OPERATOR, env.app.test_client())
    assert first.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert first.get("/api/v1/auth/whoami").status_code == 401
    assert second.get("/api/v1/auth/whoami").status_code == 401


def test_session_dies_when_user_disabled(env: Env) -> None:
    client, _ = env.login(Role.OPERATOR)
    env.services.users.update(SYSTEM, env.user_ids[Role.OPERATOR], disabled=True)
    assert client.get("/api/v1/auth/whoami").status_code == 401


def test_forged_session_cookie_refused(env: Env) -> None:
    client = env.app.test_client()
    client.set_cookie("session", "eyJ1aWQiOiJ1XzEifQ.forged.signature")
    assert client.get("/api/v1/auth/whoami").status_code == 401


def test_first_admin_must_change_one_time_password(env: Env) -> None:
    client = env.app.test_client()
    rv = client.post("/api/v1/auth/login",
                     json={"username": "admin", "password": env.init.admin_password})
    assert rv.status_code == 200 and rv.json["user"]["must_change_password"] is True
    csrf = rv.json["csrf_token"]
    blocked = client.get("/api/v1/users")
    assert blocked.status_code == 403
    assert blocked.json["error"]["code"] == "password_change_required"
    assert client.get("/api/v1/auth/whoami").status_code == 200
    weak = client.post("/api/v1/auth/password", headers={"X-CSRF-Token": csrf},
                       json={"old_password": env.init.admin_password, "new_password": "short"})
    assert weak.status_code == 400 and weak.json["error"]["code"] == "weak_password"
    rv = client.post("/api/v1/auth/password", headers={"X-CSRF-Token": csrf},
                     json={"old_password": env.init.admin_password,
                           "new_password": "a brand new long password"})
    assert rv.status_code == 200 and rv.json["user"]["must_change_password"] is False
    assert client.get("/api/v1/users").status_code == 200  # this session was renewed
    stale = client.post("/api/v1/users", headers={"X-CSRF-Token": csrf},
                        json={"username": "x1", "role": "viewer"})
    assert stale.status_code == 403, "the old CSRF token died with the old session"
    fresh = client.post("/api/v1/users", headers={"X-CSRF-Token": rv.json["csrf_token"]},
                        json={"username": "x1", "role": "viewer"})
    assert fresh.status_code == 201


def test_wrong_login_is_401_without_detail(env: Env) -> None:
    wrong = env.client.post("/api/v1/auth/login", json={"username": "admin1",
                                                         "password": "nope nope nope"})
    unknown = env.client.post("/api/v1/auth/login", json={"username": "ghost",
                                                           "password": "nope nope nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json == unknown.json
