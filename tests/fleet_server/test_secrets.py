"""No secret (passwords, token secrets, session key, broker password) appears in logs or
API responses, except the one response that hands a new secret out once."""

from __future__ import annotations

import logging

import pytest
from werkzeug.test import TestResponse

from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.datadir import load_secrets
from tests.fleet_server.support import PASSWORD, Env

NEW_PASSWORD = "another long admin password"


def _text(rv: TestResponse) -> str:
    return rv.get_data(as_text=True) + str(rv.headers)


def test_no_secret_in_logs_or_responses(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    client = env.app.test_client()
    admin = env.auth(Role.ADMIN)

    rv = client.post("/api/v1/auth/login",
                     json={"username": "admin", "password": env.init.admin_password})
    seen.append(_text(rv))
    rv = client.post("/api/v1/auth/password", headers={"X-CSRF-Token": rv.json["csrf_token"]},
                     json={"old_password": env.init.admin_password, "new_password": NEW_PASSWORD})
    seen.append(_text(rv))
    csrf = rv.json["csrf_token"]
    client.post("/api/v1/auth/login", json={"username": "admin", "password": "wrong password"})

    # Tokens are created from a console session (a token cannot mint tokens).
    created = client.post("/api/v1/tokens", headers={"X-CSRF-Token": csrf}, json={"name": "ci"})
    token_secret = created.json["secret"]
    new_user = client.post("/api/v1/users", headers=admin,
                           json={"username": "hal", "role": "viewer"})
    one_time = new_user.json["one_time_password"]
    client.post("/api/v1/auth/login", json={"username": "hal", "password": one_time})
    bearer = {"Authorization": f"Bearer {token_secret}"}
    for path in ("/api/v1/auth/whoami", "/api/v1/tokens", "/api/v1/users", "/api/v1/audit",
                 f"/api/v1/tokens/{created.json['token']['id']}", "/api/v1/openapi.json",
                 "/api/v1/health", "/api/v1/audit?limit=500"):
        rv = client.get(path, headers=bearer)
        assert rv.status_code == 200, path
        seen.append(_text(rv))
    seen.append(_text(client.get("/api/v1/auth/whoami", headers=admin)))
    revoked = client.delete(f"/api/v1/tokens/{created.json['token']['id']}", headers=admin)
    seen.append(_text(revoked))

    stored = load_secrets(env.init.data_dir)
    secrets = [env.init.admin_password, NEW_PASSWORD, PASSWORD, token_secret, one_time,
               *env.tokens.values(), stored.session_key, stored.broker_password]
    everything = "\n".join(seen)
    for secret in secrets:
        assert secret not in everything
        assert secret not in caplog.text
    # The one-time displays carry exactly their own secret.
    assert token_secret in _text(created) and one_time in _text(new_user)
    assert stored.session_key not in _text(created) + _text(new_user)


def test_database_holds_no_plaintext_secret(env: Env) -> None:
    session, csrf = env.login(Role.ADMIN)
    created = session.post("/api/v1/tokens", headers={"X-CSRF-Token": csrf}, json={"name": "c"})
    dump = "\n".join(env.services.store.db.conn.iterdump())
    stored = load_secrets(env.init.data_dir)
    for secret in (env.init.admin_password, PASSWORD, created.json["secret"],
                   *env.tokens.values(), stored.session_key, stored.broker_password):
        assert secret not in dump
