"""Drift windows of a newer version binned on an older version's reference profile (the
profile the device was set up with) are validated against that profile, found by digest
among the model's registry versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.ingest import bodies
from edgefleet.fleet_server.ingest.service import registry_references
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from tests.fleet_server.ingest.support import MODEL, reference_profile, window_summary
from tests.fleet_server.registry.conftest import make_onnx
from tests.fleet_server.support import Env


def _register(env: Env, tmp_path: Path, version: str, seed: int) -> None:
    model_file = make_onnx(tmp_path / f"{version}.onnx", n_features=3, n_out=1, seed=seed)
    with model_file.open("rb") as f:
        registry_service(env.services).upload(
            MODEL, version, f,
            UploadMetadata(reference_profile=reference_profile(seed).to_dict()), SYSTEM)


def test_a_window_binned_on_another_versions_profile_is_accepted(env: Env,
                                                                 tmp_path: Path) -> None:
    _register(env, tmp_path, "1.0", seed=0)
    _register(env, tmp_path, "2.0", seed=5)  # retrained: its own, different profile
    lookup = registry_references(env.services)
    device_binning = reference_profile(0)
    assert lookup(MODEL, "2.0").digest != device_binning.digest
    body = {"model": MODEL, "version": "2.0",
            "summary": window_summary(device_binning).to_dict()}
    drift = bodies.drift(body, lookup)
    assert drift.summary.reference == device_binning.digest
    assert drift.version == "2.0"


def test_unknown_digests_and_versions_are_still_refused(env: Env, tmp_path: Path) -> None:
    _register(env, tmp_path, "1.0", seed=0)
    lookup = registry_references(env.services)
    stranger = {"model": MODEL, "version": "1.0",
                "summary": window_summary(reference_profile(9)).to_dict()}
    with pytest.raises(bodies.BodyError, match="drift summary"):
        bodies.drift(stranger, lookup)
    unknown = {"model": MODEL, "version": "0.0.404",
               "summary": window_summary(reference_profile(0)).to_dict()}
    with pytest.raises(bodies.BodyError, match="no reference profile"):
        bodies.drift(unknown, lookup)
