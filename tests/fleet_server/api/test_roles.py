"""Every route enforces authentication and its minimum role on the server.

The matrix is built from the app's own OpenAPI document (which lists every /api/v1 rule,
see test_openapi.py): for each operation, no credentials → 401, every role below the
minimum → 403, the minimum role → not refused for authorization reasons.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet_server.auth.roles import Role
from tests.fleet_server.support import ROLES, Env, make_env


def _operations() -> list[tuple[str, str, Role | None]]:
    with tempfile.TemporaryDirectory() as tmp:
        environment = make_env(Path(tmp) / "data")
        doc = environment.client.get("/api/v1/openapi.json").json
        environment.services.store.close()
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            role = op.get("x-required-role")
            ops.append((method.upper(), path, Role(role) if role else None))
    return sorted(ops, key=lambda o: (o[1], o[0]))


OPERATIONS = _operations()
PROTECTED = [op for op in OPERATIONS if op[2] is not None]
DENIED = [(m, p, r, caller) for m, p, r in PROTECTED for caller in ROLES
          if r is not None and not caller.at_least(r)]


def _url(path: str) -> str:
    return "/api/v1" + re.sub(r"\{[^}]+\}", "does-not-exist", path.removeprefix("/api/v1"))


def _call(env: Env, method: str, path: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if method not in ("GET", "DELETE"):
        kwargs["json"] = {}
    return env.client.open(_url(path), method=method, **kwargs)


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    environment = make_env(tmp_path_factory.mktemp("roles") / "data")
    yield environment
    environment.services.store.close()


def test_there_are_protected_routes_of_every_level() -> None:
    levels = {r for _, _, r in PROTECTED}
    assert levels == set(ROLES)
    assert ("POST", "/api/v1/auth/login", None) in OPERATIONS


@pytest.mark.parametrize(("method", "path", "role"), PROTECTED,
                         ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_anonymous_is_refused(shared_env: Env, method: str, path: str, role: Role) -> None:
    rv = _call(shared_env, method, path, {})
    assert rv.status_code == 401, rv.json
    assert rv.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "role", "caller"), DENIED,
                         ids=[f"{c.value}-{m} {p}" for m, p, _, c in DENIED])
def test_lower_roles_are_refused(shared_env: Env, method: str, path: str, role: Role,
                                 caller: Role) -> None:
    rv = _call(shared_env, method, path, shared_env.auth(caller))
    assert rv.status_code == 403, rv.json
    assert rv.json["error"]["code"] == "forbidden"


@pytest.mark.parametrize(("method", "path", "role"), PROTECTED,
                         ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_minimum_role_is_let_through(shared_env: Env, method: str, path: str,
                                     role: Role) -> None:
    rv = _call(shared_env, method, path, shared_env.auth(role))
    assert rv.status_code != 401
    if rv.status_code == 403:
        assert rv.json["error"]["code"] != "forbidden", rv.json


@pytest.mark.parametrize(("method", "path", "role"), PROTECTED,
                         ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_garbage_credentials_are_refused(shared_env: Env, method: str, path: str,
                                         role: Role) -> None:
    for header in ("Bearer efa_forged", "Basic YWRtaW46YWRtaW4=", "Bearer "):
        rv = _call(shared_env, method, path, {"Authorization": header})
        assert rv.status_code == 401, (header, rv.json)
