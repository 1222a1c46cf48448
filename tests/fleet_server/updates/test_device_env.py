"""Helpers (no tests) for the device-update API tests: the real app with the auth, devices
and updates features, an initialised key set and repositories, enrolled devices that sign
their requests, and a service API token per role.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.devices.enrollment import EnrollmentService
from edgefleet.fleet_server.devices.service import device_service
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.updates import keys_dir, repo_dir
from edgefleet.fleet_server.updates.device_auth import sign_request
from edgefleet.fleet_server.updates.keys import init_keys
from edgefleet.fleet_server.updates.repository import Repository

FEATURES = ["edgefleet.fleet_server.auth", "edgefleet.fleet_server.devices",
            "edgefleet.fleet_server.updates"]
API = "/api/v1"


@dataclass
class Device:
    """An enrolled device and its private key."""

    id: str
    key: Ed25519PrivateKey

    def headers(self, method: str, path: str, body: bytes = b"", *,
                now: float | None = None, nonce: str | None = None,
                key: Ed25519PrivateKey | None = None) -> dict[str, str]:
        return sign_request(key or self.key, method, path, body,
                            now=time.time() if now is None else now,
                            nonce=nonce or secrets.token_hex(16), device_id=self.id)


@dataclass
class UpdatesEnv:
    """The real app on an initialised data dir with both repositories."""

    app: Flask
    services: Services
    repo: Repository
    base: Path
    tokens: dict[Role, str] = field(default_factory=dict)

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def enroll(self) -> Device:
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        enrollment = EnrollmentService(self.services.store, self.services.audit)
        _, secret = enrollment.create_token(SYSTEM)
        result = enrollment.enroll(secret, base64.b64encode(raw).decode())
        return Device(result.device_id, key)

    def decommission(self, device: Device) -> None:
        device_service(self.services).decommission(device.id, SYSTEM, "test")

    def bundle(self, name: str, size: int = 1024) -> None:
        path = self.base / f"src-{name}"
        path.write_bytes(secrets.token_bytes(size))
        self.repo.add_bundle(path, name)

    def device_get(self, device: Device, path: str) -> TestResponse:
        return self.client.get(API + path, headers=device.headers("GET", API + path))

    def post_events(self, device: Device, events: list[dict[str, Any]]) -> TestResponse:
        body = json.dumps({"events": events}).encode()
        path = f"{API}/device/events"
        return self.client.post(path, data=body, content_type="application/json",
                                headers=device.headers("POST", path, body))


def body_of(rv: TestResponse) -> Any:
    """The JSON body of a test-client response."""
    return rv.json


def event(state: str, *, frm: str | None = None, to: str | None = None, kind: str = "state",
          bundle: str | None = None, error: str | None = None) -> dict[str, Any]:
    """One update event as the agent reports it (every key present)."""
    return {"ts": time.time(), "kind": kind, "state": state, "from": frm, "to": to,
            "bundle": bundle, "error": error}


@contextmanager
def updates_env(base: Path) -> Iterator[UpdatesEnv]:
    data_dir = base / "data"
    init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}, session_cookie_secure=False),
                     features=FEATURES)
    services: Services = app.extensions["edgefleet"]
    signers = init_keys(keys_dir(services), base / "offline-keys")
    repo = Repository(repo_dir(services), signers)
    repo.initialise()
    env = UpdatesEnv(app, services, repo, base)
    for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):  # service tokens: no user to hash
        _, secret = services.tokens.create(SYSTEM, name=f"{role.value}-token", role=role,
                                           user_id=None, owner_role=None)
        env.tokens[role] = secret
    try:
        yield env
    finally:
        services.store.close()
