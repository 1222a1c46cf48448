"""The optional update-agent integration refuses to start half-configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.daemon.config import load_config
from edgefleet.agent.daemon.daemon import Daemon
from edgefleet.agent.daemon.errors import ConfigError, DaemonError
from tests.agent.daemon.support import Models, write_config


def test_updates_need_an_enrolled_device(tmp_path: Path, models: Models) -> None:
    config = load_config(write_config(
        tmp_path / "agent.toml", {"state_dir": tmp_path / "state", "listen": "127.0.0.1:0"},
        [{"name": "mlp", "path": models.mlp, "version": "1"}],
        {"telemetry": {"enabled": False}, "updates": {"enabled": True, "model": "mlp"}}))
    daemon = Daemon(config)
    with pytest.raises(DaemonError, match="update agent cannot start"):
        daemon.start()
    assert daemon.http is None and daemon.predlog is None  # nothing left running


def test_telemetry_without_enrollment_is_off_not_fatal(tmp_path: Path, models: Models) -> None:
    config = load_config(write_config(
        tmp_path / "agent.toml", {"state_dir": tmp_path / "state", "listen": "127.0.0.1:0"},
        [{"name": "mlp", "path": models.mlp, "version": "1"}]))
    with Daemon(config) as daemon:
        assert daemon.telemetry is None
        assert daemon.health()["telemetry"] == {"enabled": False}
        _, version, out = daemon.predict("mlp", {"input": [[0.0] * 16]})
        assert version == "1" and out["probabilities"].shape == (1, 4)
    with pytest.raises(DaemonError, match="not running"):
        daemon.predict("mlp", {"input": [[0.0] * 16]})


def test_a_reference_profile_that_does_not_fit_is_a_config_error(tmp_path: Path,
                                                                 models: Models) -> None:
    config = load_config(write_config(
        tmp_path / "agent.toml", {"state_dir": tmp_path / "state", "listen": "127.0.0.1:0"},
        [{"name": "digits", "path": models.digits, "version": "1",
          "reference_profile": models.mlp_profile}], {"telemetry": {"enabled": False}}))
    with pytest.raises(ConfigError, match="no output has 4 column"):
        Daemon(config).start()
