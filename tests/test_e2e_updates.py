"""Issue "signed over-the-air updates", done-when, with nothing but the shipped commands.

A real ``edgefleet server run`` process, ``keys init``, ``release build``, ``release
publish``, a device enrolled with ``agent enroll``, an operator assignment through the
API, and ``edgefleet agent update --once`` installing the release, reporting it, and
rolling back a release that fails warm-up.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edgefleet.tools.modelgen import onnx_models
from tests.fleet_server.test_server_process import CLI, _env, start_server

WAIT_S = 60.0


def _cli(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT_S,
                          env=env or _env(), check=False)
    assert proc.returncode == 0, f"edgefleet {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_release_publish_assign_install_report_and_roll_back(tmp_path: Path) -> None:
    data, offline = tmp_path / "server", tmp_path / "offline-keys"
    _cli("server", "init", "--data-dir", str(data))
    _cli("keys", "init", "--data-dir", str(data), "--offline-dir", str(offline))
    token = _cli("server", "token", "create", "--data-dir", str(data), "--role", "operator",
                 "--name", "e2e").strip()
    auth = {"Authorization": f"Bearer {token}"}

    spec = onnx_models.mlp(tmp_path / "clf.onnx", sizes=(8, 16, 3), seed=3)
    reference = tmp_path / "reference.npy"
    np.save(reference, np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    releases = tmp_path / "releases"
    releases.mkdir()
    good = _cli("release", "build", str(spec.path), "--name", "clf", "--version", "1.0.0",
                "--reference", str(reference), "-o", str(releases)).strip().splitlines()[-1]
    # The same model with an impossible latency budget: it installs but fails warm-up.
    slow = _cli("release", "build", str(spec.path), "--name", "clf", "--version", "1.1.0",
                "--parent", "1.0.0", "--latency-budget-ms", "0.001",
                "-o", str(releases)).strip().splitlines()[-1]
    for bundle in (good, slow):
        _cli("release", "publish", bundle, "--data-dir", str(data), "--offline-dir",
             str(offline))

    server = start_server(data)
    try:
        api = server.url
        rv = requests.post(f"{api}/enrollment-tokens", json={"ttl_s": 600}, headers=auth,
                           timeout=WAIT_S)
        assert rv.status_code == 201, rv.text
        device_dir = tmp_path / "device"
        _cli("agent", "enroll", "--server", api.removesuffix("/api/v1"), "--token",
             rv.json()["token"], "--state-dir", str(device_dir))
        device_id = _device_id(device_dir)

        def assign(version: str) -> None:
            r = requests.put(f"{api}/devices/{device_id}/assignment",
                             json={"model": "clf", "version": version}, headers=auth,
                             timeout=WAIT_S)
            assert r.status_code == 200, r.text

        def update_view() -> dict[str, Any]:
            r = requests.get(f"{api}/devices/{device_id}/update", headers=auth,
                             timeout=WAIT_S)
            assert r.status_code == 200, r.text
            return dict(r.json())

        assign("1.0.0")
        out = _cli("agent", "update", "--state-dir", str(device_dir), "--once")
        assert "state: committed" in out, out
        view = _wait_for(update_view, lambda v: v["state"] == "committed")
        assert view["assignment"]["target"] == "clf-1.0.0.tar"

        assign("1.1.0")
        out = _cli("agent", "update", "--state-dir", str(device_dir), "--once")
        assert "state: idle" in out and "WarmupError" in out, out
        view = _wait_for(update_view, lambda v: v["state"] == "idle")
        assert any("WarmupError" in (e["error"] or "") for e in view["events"]["items"])

        # The registry knows both releases with their lineage; the device still runs 1.0.0.
        r = requests.get(f"{api}/models/clf/versions/1.1.0", headers=auth, timeout=WAIT_S)
        assert r.status_code == 200, r.text
        assert r.json()["lineage"]["bundle"] == "clf-1.1.0.tar"
        active = (device_dir / "update").rglob("*.onnx")
        assert any(p.read_bytes() == spec.path.read_bytes() for p in active)
    finally:
        assert server.stop() == 0


def _device_id(state_dir: Path) -> str:
    return str(json.loads((state_dir / "enrollment.json").read_text())["device_id"])


def _wait_for(read: Any, ok: Any, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    value = read()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    assert ok(value), value
    return dict(value)
