"""UpdateAgent and ``edgefleet agent update`` against the real fleet server over real HTTP.

The device's state directory is what enrollment writes (enrollment.json with the server's
update roots, device_key.pem); bundles are real ONNX models published in the server's
image repository and assigned through its director (``Repository.assign``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.update.agent_loop import AgentSetupError, UpdateAgent
from edgefleet.agent.update.state import UpdateState
from edgefleet.tools.cli import cli
from tests.agent.update.support import assignment_for, build_bundle, manifest_of
from tests.fleet_server.updates.harness import RepoServer, repo_server, serving
from tests.fleet_server.updates.test_device_env import API, updates_env

DEVICE = "dev-1"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    with repo_server(tmp_path / "server") as srv:
        yield srv


def enroll_dir(server: RepoServer, state_dir: Path, *, with_roots: bool = True) -> Path:
    """What ``edgefleet agent enroll`` leaves in the state directory."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    (state_dir / "device_key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    roots = {"image": json.loads(server.image_root()),
             "director": json.loads(server.director_root())}
    record = {"format": 1, "device_id": DEVICE,
              "server_url": server.api_url.removesuffix("/api/v1"),
              "broker": {"url": "mqtt://127.0.0.1:1", "username": DEVICE, "password": "x"},
              "group": None, "update_root": roots if with_roots else None,
              "key_file": "device_key.pem"}
    (state_dir / "enrollment.json").write_text(json.dumps(record))
    return state_dir


def transitions(agent: UpdateAgent) -> list[tuple[str, str]]:
    return [(e["from"], e["to"]) for e in agent.reporter.events() if e["kind"] == "state"]


def test_installs_then_rolls_back_a_bundle_failing_warm_up(server: RepoServer,
                                                          tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    good, bad = build_bundle(bundles, "1", seed=1), build_bundle(bundles, "2", kind="nan")
    for bundle in (good, bad):
        server.repo.add_bundle(bundle, bundle.name)
    state_dir = enroll_dir(server, tmp_path / "device")
    agent = UpdateAgent.from_state_dir(state_dir)
    try:
        assert agent.run_once().state is UpdateState.IDLE  # nothing assigned yet
        server.repo.assign(DEVICE, good.name)
        assert agent.run_once().state is UpdateState.COMMITTED
        assert agent.holder.label == assignment_for(good).key
        sample = manifest_of(good).sample_arrays()
        agent.holder.predict(sample)
        assert ("warming", "switching") in transitions(agent)

        server.repo.assign(DEVICE, bad.name)
        record = agent.run_once()
        assert record.state is UpdateState.IDLE
        assert record.failed_in is UpdateState.WARMING
        assert "NaN" in (record.error or "")
        assert agent.holder.label == assignment_for(good).key  # the old model serves
        agent.holder.predict(sample)
        failed = [e for e in agent.reporter.events() if e["error"]]
        assert failed and failed[0]["bundle"] == bad.name
        assert transitions(agent)[-1] == ("rolling_back", "idle")
        assert list((state_dir / "update" / "partial").glob("*")) == []
    finally:
        agent.close(flush_timeout_s=0)

    # a restarted agent serves the committed model and keeps the undelivered events
    again = UpdateAgent.from_state_dir(state_dir)
    try:
        again.boot()
        assert again.holder.label == assignment_for(good).key
        again.holder.predict(sample)
        assert again.reporter.pending() >= len(failed)
    finally:
        again.close(flush_timeout_s=0)


def test_enrolled_device_installs_rolls_back_and_the_server_knows(tmp_path: Path) -> None:
    """Done-when, end to end: a device enrolled with the server (its key known there),
    an assignment, the agent installs it and reports it (signed events the server
    accepts), then rolls back a bundle failing warm-up; the server shows each state."""
    from edgefleet.fleet_server.auth.roles import Role

    bundles = tmp_path / "bundles"
    good, bad = build_bundle(bundles, "1", seed=1), build_bundle(bundles, "2", kind="shape")
    with updates_env(tmp_path / "server") as env:
        for bundle in (good, bad):
            env.repo.add_bundle(bundle, bundle.name)
        device = env.enroll()
        state_dir = tmp_path / "device"
        state_dir.mkdir()
        (state_dir / "device_key.pem").write_bytes(device.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        layout = env.repo.layout

        def reported_state() -> dict[str, object]:
            rv = env.client.get(f"{API}/devices/{device.id}/update",
                                headers=env.auth(Role.VIEWER))
            assert rv.status_code == 200, rv.text
            assert rv.json is not None
            return rv.json

        with serving(env.app) as url:
            (state_dir / "enrollment.json").write_text(json.dumps({
                "format": 1, "device_id": device.id, "server_url": url,
                "update_root": {
                    "image": json.loads((layout.image_metadata / "root.json").read_bytes()),
                    "director": json.loads((layout.director_root / "root.json").read_bytes()),
                },
                "key_file": "device_key.pem"}))
            agent = UpdateAgent.from_state_dir(state_dir)
            try:
                env.repo.assign(device.id, good.name)
                assert agent.run_once().state is UpdateState.COMMITTED
                assert agent.reporter.flush(10)
                assert reported_state()["state"] == "committed"

                env.repo.assign(device.id, bad.name)
                record = agent.run_once()
                assert record.failed_in is UpdateState.WARMING
                assert agent.holder.label == assignment_for(good).key
                agent.holder.predict(manifest_of(good).sample_arrays())
                assert agent.reporter.flush(10)
                view = reported_state()
                assert view["state"] == "idle"
                events = view["events"]["items"]  # type: ignore[index]
                assert any("WarmupError" in (e["error"] or "") for e in events)
                assert agent.reporter.dropped == 0
            finally:
                agent.close(flush_timeout_s=0)


def test_run_forever_picks_up_a_new_assignment_and_stops(server: RepoServer,
                                                         tmp_path: Path) -> None:
    good = build_bundle(tmp_path / "bundles", "1", seed=1)
    server.repo.add_bundle(good, good.name)
    agent = UpdateAgent.from_state_dir(enroll_dir(server, tmp_path / "device"),
                                       check_interval_s=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run_forever, args=(stop,))
    thread.start()
    try:
        server.repo.assign(DEVICE, good.name)
        deadline = time.monotonic() + 30
        while agent.holder.label != assignment_for(good).key and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.holder.label == assignment_for(good).key
    finally:
        stop.set()
        thread.join(30)
        agent.close(flush_timeout_s=0)
    assert not thread.is_alive()


def test_no_update_roots_is_a_clear_error(server: RepoServer, tmp_path: Path) -> None:
    state_dir = enroll_dir(server, tmp_path / "device", with_roots=False)
    with pytest.raises(AgentSetupError, match="edgefleet keys init"):
        UpdateAgent.from_state_dir(state_dir)
    with pytest.raises(AgentSetupError, match="not enrolled"):
        UpdateAgent.from_state_dir(tmp_path / "nowhere")


def test_cli_update_once(server: RepoServer, tmp_path: Path) -> None:
    good = build_bundle(tmp_path / "bundles", "1", seed=1)
    server.repo.add_bundle(good, good.name)
    server.repo.assign(DEVICE, good.name)
    state_dir = enroll_dir(server, tmp_path / "device")
    result = CliRunner().invoke(cli, ["agent", "update", "--once", "--state-dir",
                                      str(state_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warming -> switching" in result.output
    assert "state: committed" in result.output

    missing = CliRunner().invoke(cli, ["agent", "update", "--once", "--state-dir",
                                       str(tmp_path / "nowhere")])
    assert missing.exit_code != 0
    assert "not enrolled" in missing.output


def test_cli_update_loop_stops_on_sigterm(server: RepoServer, tmp_path: Path) -> None:
    good = build_bundle(tmp_path / "bundles", "1", seed=1)
    server.repo.add_bundle(good, good.name)
    server.repo.assign(DEVICE, good.name)
    state_dir = enroll_dir(server, tmp_path / "device")
    edgefleet = Path(sys.executable).parent / "edgefleet"
    proc = subprocess.Popen([str(edgefleet), "agent", "update", "--state-dir", str(state_dir),
                             "--interval", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)  # never hang the suite on a silent child
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # wait until the first update is committed
            lines.append(line)
            if "switching -> committed" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping (SIGTERM)" in err
    assert any("switching -> committed" in line for line in lines), "".join(lines) + err


def test_cli_update_is_documented() -> None:
    assert "edgefleet agent update" in (ROOT / "docs" / "updater.md").read_text()
