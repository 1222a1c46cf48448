"""Fixtures of the federated-jobs tests: the real app with the fljobs feature, a registry
holding a logistic-regression base version, enrolled devices in a group and a hold-out set.

``FlEnv.federation`` of a job service can be swapped for ``FakeFederation`` (fault
injection: runs that fail after some rounds); the end-to-end test uses the real SuperLink.
"""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask.testing import FlaskClient

from edgefleet.federated.flower.checkpoint import FailedNode, RoundRecord, save_round
from edgefleet.federated.flower.control import RunState
from edgefleet.federated.flower.errors import RunError
from edgefleet.federated.models import create, to_onnx
from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.devices.enrollment import EnrollmentService
from edgefleet.fleet_server.devices.groups import GroupService
from edgefleet.fleet_server.fljobs import FlJobService, fljob_service
from edgefleet.fleet_server.fljobs.service import AUTORUN_KEY
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from edgefleet.fleet_server.services import Services
from tests.federated.conftest import DigitsSplit, split_digits

API = "/api/v1"
MODEL = "digits"
BASE = "1.0"
GROUP = "lab"


@dataclass
class FlEnv:
    """The real app with the fljobs feature, tokens per role, devices, data."""

    app: Any
    services: Services
    base: Path
    digits: DigitsSplit
    holdout: Path
    devices: list[str] = field(default_factory=list)
    tokens: dict[Role, str] = field(default_factory=dict)

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()

    @property
    def svc(self) -> FlJobService:
        return fljob_service(self.services)

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def post(self, path: str, body: Any, role: Role = Role.OPERATOR) -> Any:
        return self.client.post(API + path, json=body, headers=self.auth(role))

    def get(self, path: str, role: Role = Role.VIEWER) -> Any:
        return self.client.get(API + path, headers=self.auth(role))

    def job_body(self, **overrides: Any) -> dict[str, Any]:
        body = {"model": MODEL, "base_version": BASE, "cohort": {"group": GROUP},
                "holdout": str(self.holdout), "min_nodes": 2, "rounds": 2,
                "local_epochs": 2, "lr": 0.5, "strategy": "fedavg", "evaluate_every": 0}
        return body | overrides

    def seed_nodes(self, devices: list[str] | None = None) -> None:
        """fl_nodes rows as ``POST /fl/nodes`` writes them (for tests without a SuperLink)."""
        rows = [{"device_id": d, "node_id": 1000 + i, "public_key_pem": f"key-{d}",
                 "registered_at": "2026-01-01T00:00:00+00:00", "registered_by": "test"}
                for i, d in enumerate(devices if devices is not None else self.devices)]
        self.services.store.db["fl_nodes"].insert_all(rows)


def base_onnx() -> bytes:
    """A fresh (all-zero, chance-level) logistic regression on digits, as deployed."""
    return to_onnx(create("logreg", 64, 10))


def make_fl_env(base: Path, digits: DigitsSplit, *, n_devices: int = 3,
                autorun: bool = False) -> FlEnv:
    data_dir = base / "data"
    init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}, session_cookie_secure=False))
    services: Services = app.extensions["edgefleet"]
    services.extras[AUTORUN_KEY] = autorun
    holdout = base / "holdout.npz"
    np.savez(holdout, x=digits.x_test, y=digits.y_test)
    env = FlEnv(app, services, base, digits, holdout)
    for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):
        _, secret = services.tokens.create(SYSTEM, name=f"{role.value}-token", role=role,
                                           user_id=None, owner_role=None)
        env.tokens[role] = secret
    registry_service(services).upload(MODEL, BASE, io.BytesIO(base_onnx()),
                                      UploadMetadata(description="random init"), SYSTEM)
    GroupService(services.store, services.audit).create_group(GROUP, SYSTEM)
    enrollment = EnrollmentService(services.store, services.audit)
    for _ in range(n_devices):
        raw = Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        _, secret = enrollment.create_token(SYSTEM, group=GROUP)
        result = enrollment.enroll(secret, base64.b64encode(raw).decode())
        env.devices.append(result.device_id)
    return env


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return split_digits()


@pytest.fixture
def fl(tmp_path: Path, digits: DigitsSplit) -> Iterator[FlEnv]:
    """An app whose jobs stay queued (no worker): API and validation tests."""
    env = make_fl_env(tmp_path, digits)
    yield env
    env.svc.close()
    env.services.store.close()


class FakeFederation:
    """Stands in for the SuperLink to inject faults: each run "trains" by writing round
    checkpoints with the weights a test chooses; ``fail_after`` makes runs fail after
    that many of their rounds (one entry per run)."""

    def __init__(self, weights: dict[str, np.ndarray], node_ids: list[int],
                 fail_after: list[int | None] | None = None, refuse: int = 0) -> None:
        self.weights = weights
        self.refuse = refuse  # this many submissions are rejected by the "SuperLink"
        self.node_ids = node_ids
        self.fail_after = list(fail_after or [])
        self.configs: list[dict[str, Any]] = []
        self.stopped: list[int] = []
        self._ids = itertools.count(101)
        self._states: dict[int, RunState] = {}
        self.started = True  # as FederationManager.started: the "SuperLink" runs

    def online_node_ids(self) -> set[int]:
        return set(self.node_ids)

    def generation(self) -> tuple[int, int]:
        return (1, 0)

    def submit_run(self, config: dict[str, Any]) -> int:
        if self.refuse:
            self.refuse -= 1
            raise RunError("Control API StartRun rejected: injected")
        run_id = next(self._ids)
        self.configs.append(dict(config))
        ckpt = Path(str(config["checkpoint-dir"]))
        from edgefleet.federated.flower.checkpoint import latest_round

        assert latest_round(ckpt) is None, "each run gets an empty checkpoint directory"
        first = int(config["start-round"])
        if first == 1:
            save_round(ckpt, self.weights, _record(0, run_id, "initial", []))
        fail = self.fail_after.pop(0) if self.fail_after else None
        end = int(config["num-rounds"]) if fail is None else first + fail - 1
        for r in range(first, end + 1):
            failed = [FailedNode(self.node_ids[-1], "train", "timeout")] if r == 1 else []
            save_round(ckpt, self.weights, _record(r, run_id, "aggregated", self.node_ids,
                                                   failed))
        self._states[run_id] = RunState(run_id, "finished",
                                        "completed" if fail is None else "failed",
                                        "" if fail is None else "injected failure")
        return run_id

    def run_state(self, run_id: int) -> RunState:
        return self._states[run_id]

    def stop_run(self, run_id: int) -> None:
        self.stopped.append(run_id)

    def stop(self) -> None:
        pass


def _record(r: int, run_id: int, status: str, nodes: list[int],
            failed: list[FailedNode] | None = None) -> RoundRecord:
    return RoundRecord(round=r, run_id=run_id, status=status, strategy="fedavg",
                       participating_nodes=list(nodes), failed_nodes=failed or [],
                       examples=100 * len(nodes), bytes_sent=2600 * len(nodes),
                       bytes_received=2600 * len(nodes), duration_s=1.5,
                       train_metrics={"global-accuracy": 0.5} if nodes else {})


def trained_weights(digits: DigitsSplit) -> dict[str, np.ndarray]:
    """Weights of a logistic regression trained centrally on all shards (what a good
    federation would produce)."""
    model = create("logreg", 64, 10)
    model.fit(np.concatenate(digits.node_x), np.concatenate(digits.node_y), epochs=5, lr=0.5)
    return model.weights()
