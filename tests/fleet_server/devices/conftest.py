"""Fixtures for the devices tests: a migrated store, a settable clock, the real app."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from edgefleet.fleet_server import audit as audit_mod
from edgefleet.fleet_server import devices
from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM, Actor, ActorKind, AuditLog
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.devices.enrollment import EnrollmentService
from edgefleet.fleet_server.devices.groups import GroupService
from edgefleet.fleet_server.devices.service import DeviceService
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Store

OPERATOR = Actor(ActorKind.USER, "u-op", "olga", "operator")


def new_public_key() -> str:
    """A fresh Ed25519 public key as base64 of its 32 raw bytes (what the agent sends)."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class RecordingBroker:
    """Stands in for the broker's control hook and remembers whom it was told to drop."""

    dropped: list[str] = field(default_factory=list)

    def disconnect(self, username: str) -> None:
        self.dropped.append(username)


@dataclass
class DeviceServices:
    store: Store
    audit: AuditLog
    clock: Clock
    broker: RecordingBroker
    enrollment: EnrollmentService
    groups: GroupService
    devices: DeviceService


@pytest.fixture
def ds(tmp_path: Path) -> Iterator[DeviceServices]:
    store = Store.open(tmp_path / "test.db")
    store.migrate([audit_mod.COMPONENT, devices.COMPONENT])
    audit = AuditLog(store)
    clock = Clock()
    broker = RecordingBroker()
    yield DeviceServices(
        store, audit, clock, broker,
        EnrollmentService(store, audit, clock=clock),
        GroupService(store, audit, clock=clock),
        DeviceService(store, audit, clock=clock, on_revoke=broker.disconnect),
    )
    store.close()


@dataclass
class ApiEnv:
    """The real app with one API token per role and a recording broker hook."""

    app: Flask
    services: Services
    tokens: dict[str, str]
    broker: RecordingBroker

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def make_api_env(data_dir: Path, **config: Any) -> ApiEnv:
    init_data_dir(data_dir, all_components())
    broker = RecordingBroker()
    app = create_app(load_config(data_dir, env={}, **config), broker=broker)
    services: Services = app.extensions["edgefleet"]
    tokens = {}
    for name, role in (("admin", Role.ADMIN), ("operator", Role.OPERATOR),
                       ("viewer", Role.VIEWER)):
        user, _ = services.users.create(SYSTEM, f"{name}1", role)
        _, tokens[name] = services.tokens.create(SYSTEM, name=f"{name}-token", role=role,
                                                 user_id=user.id, owner_role=role)
    return ApiEnv(app, services, tokens, broker)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiEnv]:
    env = make_api_env(tmp_path / "data")
    yield env
    env.services.store.close()
