"""``edgefleet agent run`` as a real process: serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from edgefleet.agent.daemon.client import AgentClient
from tests.agent.daemon.support import Models, write_config
from tests.conftest import free_port, wait_for_port


def test_agent_run_serves_and_stops_on_sigterm(tmp_path: Path, models: Models) -> None:
    port = free_port()
    config = write_config(tmp_path / "agent.toml",
                          {"state_dir": tmp_path / "state", "listen": f"127.0.0.1:{port}"},
                          [{"name": "digits", "path": models.digits, "version": "3"}])
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.tools.cli", "agent", "run",
                             "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=30)
        client = AgentClient(f"http://127.0.0.1:{port}")
        result = client.predict("digits", {"input": models.digits_x[:1].tolist()})
        assert client.feedback(result.id, int(models.digits_y[0])) is not None
        assert client.health()["models"]["digits"]["version"] == "3"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "stopping on SIGTERM" in stderr
    assert "Traceback" not in stderr
    assert (tmp_path / "state" / "feedback.sqlite").exists()


def test_agent_run_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", {"state_dir": "s", "window_s": -1},
                          [{"name": "m", "path": "m.onnx", "version": "1"}])
    done = subprocess.run([sys.executable, "-m", "edgefleet.tools.cli", "agent", "run",
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert "window_s: must be a number >= 1.0" in done.stderr
    assert "Traceback" not in done.stderr
    missing_model = write_config(tmp_path / "m.toml", {"state_dir": "s", "listen": "127.0.0.1:0"},
                                 [{"name": "m", "path": "nope.onnx", "version": "1"}])
    done = subprocess.run([sys.executable, "-m", "edgefleet.tools.cli", "agent", "run",
                           "--config", str(missing_model)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "model m: cannot load model" in done.stderr
    assert "Traceback" not in done.stderr
