"""Helpers of the fleet drift tests: the real app with the fleetdrift feature, a model
version with a reference profile in the registry, enrolled devices in groups, and
device windows written into ``drift_windows`` the way ingestion stores them."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.drift import ReferenceProfile, SummaryBuilder, WindowSummary
from edgefleet.fleet_server.app import FEATURES, all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.devices.enrollment import EnrollmentService
from edgefleet.fleet_server.devices.groups import GroupService
from edgefleet.fleet_server.fleetdrift import FleetDriftService, FleetDriftSettings, install
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from edgefleet.fleet_server.services import Services

MODEL, VERSION = "vision", "1.0.0"
FEATURE_NAMES = ("f0", "f1")
DRIFT_FEATURES = list(FEATURES)  # the app mounts fleetdrift itself

# The ingestion helper's fixed schema (created here when its migration is not present).
DRIFT_WINDOWS_DDL = (
    "CREATE TABLE IF NOT EXISTS drift_windows (id INTEGER PRIMARY KEY,"
    " device_id TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,"
    ' start REAL NOT NULL, "end" REAL NOT NULL, n INTEGER NOT NULL, summary TEXT NOT NULL,'
    " received_at TEXT NOT NULL)"
)


def rows(seed: int, n: int = 1000, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (x, y) rows; ``shift`` moves feature f0 by that many standard deviations."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    x[:, 0] += shift
    y = 1.0 / (1.0 + np.exp(-(x[:, :1] + x[:, 1:])))
    return x, y


def make_reference() -> ReferenceProfile:
    x, y = rows(12345, n=20_000)
    return ReferenceProfile.build(x, FEATURE_NAMES, y, ["score"])


def write_onnx(path: Path) -> Path:
    """A real two-feature linear ONNX model."""
    w = numpy_helper.from_array(np.ones((2, 1), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@dataclass
class DriftEnv:
    """The real app (fleetdrift included) on an initialised data dir."""

    data_dir: Path
    app: Flask
    services: Services
    reference: ReferenceProfile
    viewer_token: str
    clock: list[float] = field(default_factory=lambda: [1_700_000_000.0])

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()

    @property
    def drift(self) -> FleetDriftService:
        svc = self.services.extras["fleetdrift"]
        assert isinstance(svc, FleetDriftService)
        return svc

    def viewer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.viewer_token}"}

    def get(self, path: str, status: int = 200, *, auth: bool = True) -> Any:
        """GET ``path`` (as the viewer unless ``auth`` is False), check the status and
        return the JSON body."""
        rv = self.client.get(path, headers=self.viewer() if auth else {})
        assert rv.status_code == status, rv.json
        return rv.json

    def enroll(self, group: str | None = None) -> str:
        """Enroll a real device (optionally in ``group``); returns its id."""
        enrollment = EnrollmentService(self.services.store, self.services.audit)
        _, secret = enrollment.create_token(SYSTEM, group=group)
        return enrollment.enroll(secret, public_key()).device_id

    def create_group(self, name: str) -> None:
        GroupService(self.services.store, self.services.audit).create_group(name, SYSTEM)

    def summary(self, seed: int, shift: float = 0.0, n: int = 1000) -> WindowSummary:
        """One device window of ``n`` predictions ending at the next clock tick."""
        builder = SummaryBuilder(self.reference, model_version=VERSION)
        builder.add_batch(*rows(seed, n, shift))
        start = self.clock[0]
        self.clock[0] += 60.0
        return builder.finish(start, self.clock[0])

    def store_window(self, device_id: str, summary: WindowSummary,
                     version: str = VERSION) -> dict[str, Any]:
        """Insert a window into ``drift_windows`` as ingestion does; returns its dict."""
        data = summary.to_dict()
        with self.services.store.transaction() as db:
            db.execute(
                'INSERT INTO drift_windows (device_id, model, version, start, "end", n,'
                " summary, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [device_id, MODEL, version, summary.start_ts, summary.end_ts,
                 summary.predictions, json.dumps(data),
                 datetime.now(UTC).replace(microsecond=0).isoformat()])
        return data

    def close(self) -> None:
        self.drift.close()
        self.services.store.close()


def open_env(data_dir: Path, settings: FleetDriftSettings, *, fresh: bool,
             reference: ReferenceProfile, viewer_token: str = "") -> DriftEnv:
    """Build the app on ``data_dir`` (``fresh``: initialise it, register the model
    version and a viewer token; otherwise reuse what is there, as after a restart)."""
    if fresh:
        init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}, session_cookie_secure=False),
                     features=DRIFT_FEATURES)
    services: Services = app.extensions["edgefleet"]
    with services.store.transaction() as db:
        db.execute(DRIFT_WINDOWS_DDL)
    install(services, settings)
    if fresh:
        user, _ = services.users.create(SYSTEM, "viewer1", Role.VIEWER,
                                        "correct horse battery staple")
        _, viewer_token = services.tokens.create(SYSTEM, name="viewer-token", role=Role.VIEWER,
                                                 user_id=user.id, owner_role=Role.VIEWER)
        model_file = write_onnx(data_dir / "model.onnx")
        registry_service(services).upload(
            MODEL, VERSION, io.BytesIO(model_file.read_bytes()),
            UploadMetadata(reference_profile=reference.to_dict()), SYSTEM)
    return DriftEnv(data_dir, app, services, reference, viewer_token)
