"""Helpers for the fleet server core tests: an initialised data dir, the real app, tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import InitResult, init_data_dir, load_secrets
from edgefleet.fleet_server.services import Services

PASSWORD = "correct horse battery staple"
ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


@dataclass
class Env:
    """The real app on an initialised data dir, with one user + API token per role."""

    app: Flask
    services: Services
    init: InitResult
    tokens: dict[Role, str] = field(default_factory=dict)
    token_ids: dict[Role, str] = field(default_factory=dict)
    user_ids: dict[Role, str] = field(default_factory=dict)
    usernames: dict[Role, str] = field(default_factory=dict)

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def auth_admin(self) -> dict[str, str]:
        return self.auth(Role.ADMIN)

    def secrets(self) -> list[str]:
        """Every secret this environment knows (none may appear in logs or responses)."""
        return [self.init.admin_password, *self.tokens.values(),
                *load_secrets(self.init.data_dir).values()]

    def login(self, role: Role, client: FlaskClient | None = None) -> tuple[FlaskClient, str]:
        """A client with a console session for the role's user, and its CSRF token."""
        client = client or self.client
        rv = client.post("/api/v1/auth/login",
                         json={"username": self.usernames[role], "password": PASSWORD})
        assert rv.status_code == 200, rv.json
        return client, rv.json["csrf_token"]


def make_env(data_dir: Path, **config: Any) -> Env:
    """``server init`` + ``create_app`` (plain-HTTP cookies) + a user and token per role."""
    init = init_data_dir(data_dir, all_components())
    config.setdefault("session_cookie_secure", False)
    app = create_app(load_config(data_dir, env={}, **config))
    services: Services = app.extensions["edgefleet"]
    env = Env(app, services, init)
    for role in ROLES:
        name = f"{role.value}1"
        user, _ = services.users.create(SYSTEM, name, role, PASSWORD)
        token, secret = services.tokens.create(SYSTEM, name=f"{name}-token", role=role,
                                               user_id=user.id, owner_role=role)
        env.tokens[role], env.token_ids[role] = secret, token.id
        env.user_ids[role], env.usernames[role] = user.id, name
    return env
