"""Fixtures for the registry tests: a migrated store, actors, small real ONNX models."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from onnx import TensorProto, helper, numpy_helper

from edgefleet.fleet_server import audit as audit_mod
from edgefleet.fleet_server import registry
from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM, Actor, ActorKind, AuditLog
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.registry.artifacts import ArtifactStore
from edgefleet.fleet_server.registry.service import RegistryService
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Store

ALICE = Actor(ActorKind.USER, "u-alice", "alice", "operator")
BOB = Actor(ActorKind.USER, "u-bob", "bob", "operator")
ROOT = Actor(ActorKind.USER, "u-root", "root", "admin")
VIEWER = Actor(ActorKind.USER, "u-val", "val", "viewer")


def make_onnx(
    path: Path,
    *,
    n_features: int = 4,
    n_out: int = 2,
    input_name: str = "x",
    seed: int = 0,
    batch: int | str = "N",
) -> Path:
    """Write a real linear ONNX model ``y = x @ W + b`` to ``path``."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(n_features, n_out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["xw"]),
         helper.make_node("Add", ["xw", "B"], ["y"])],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n_out])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def db_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "test.db")
    store.migrate([audit_mod.COMPONENT, registry.COMPONENT])
    yield store
    store.close()


@pytest.fixture
def audit(db_store: Store) -> AuditLog:
    return AuditLog(db_store)


@pytest.fixture
def svc(db_store: Store, audit: AuditLog, tmp_path: Path) -> RegistryService:
    return RegistryService(db_store, audit, ArtifactStore(tmp_path / "artifacts"),
                           max_artifact_bytes=10_000_000)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return make_onnx(tmp_path / "m1.onnx")


# -- the real app (create_app on an initialised data dir) --------------------------------


@dataclass
class ApiEnv:
    """A created app with one API token per role."""

    app: Flask
    services: Services
    tokens: dict[str, str]
    user_ids: dict[str, str]

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def make_api_env(data_dir: Path, users: tuple[tuple[str, Role], ...], **config: Any) -> ApiEnv:
    """Initialise ``data_dir``, create the app and a user + token per ``(name, role)``."""
    init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}, **config))
    services: Services = app.extensions["edgefleet"]
    tokens, user_ids = {}, {}
    for name, role in users:
        user, _ = services.users.create(SYSTEM, name, role)
        _, secret = services.tokens.create(SYSTEM, name=f"{name}-token", role=role,
                                           user_id=user.id, owner_role=role)
        tokens[name], user_ids[name] = secret, user.id
    return ApiEnv(app, services, tokens, user_ids)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiEnv]:
    env = make_api_env(tmp_path / "data", (("admin1", Role.ADMIN), ("op1", Role.OPERATOR),
                                           ("op2", Role.OPERATOR), ("viewer1", Role.VIEWER)))
    yield env
    env.services.store.close()
