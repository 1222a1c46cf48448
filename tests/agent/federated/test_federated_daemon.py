"""The ``[federated]`` table of agent.toml and the daemon starting/stopping the supervisor."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.daemon.config import ConfigError, parse_config
from edgefleet.agent.daemon.daemon import Daemon
from edgefleet.agent.federated.config import FederatedConfig
from tests.agent.federated.conftest import N_FEATURES


def parse(tmp_path: Path, federated: dict[str, Any] | None, *, models: int = 1) -> Any:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"), "listen": "127.0.0.1:0",
        "flush_interval_s": 0.05, "telemetry": {"enabled": False},
        "models": [{"name": f"m{i}" if i else "mlp", "path": "mlp.onnx", "version": "1.0"}
                   for i in range(models)],
    }
    if federated is not None:
        data["federated"] = federated
    return parse_config(data, base_dir=tmp_path)


ENABLED = {"enabled": True, "superlink": "fl.example.com:9092", "ca_cert": "ca.pem"}


def test_federated_is_off_by_default_and_parses_every_key(tmp_path: Path) -> None:
    assert parse(tmp_path, None).federated == FederatedConfig(model="mlp")
    config = parse(tmp_path, {**ENABLED, "node_key": "keys/node.key", "min_examples": 50,
                              "max_examples": 500, "holdout_fraction": 0.25,
                              "max_load_per_cpu": 0.0, "refresh_s": 60}).federated
    assert config == FederatedConfig(
        enabled=True, superlink="fl.example.com:9092", ca_cert=tmp_path / "ca.pem",
        node_key=tmp_path / "keys" / "node.key", model="mlp", min_examples=50,
        max_examples=500, holdout_fraction=0.25, max_load_per_cpu=0.0, refresh_s=60.0)


def test_enabled_without_superlink_joins_the_fleet_servers_federation(
        tmp_path: Path) -> None:
    config = parse(tmp_path, {"enabled": True}).federated
    assert config.enabled and config.superlink == "" and config.ca_cert is None


@pytest.mark.parametrize(("table", "models", "message"), [
    ({"enabled": True, "ca_cert": "ca.pem"}, 1, "federated.superlink: must be 'HOST:PORT'"),
    ({**ENABLED, "superlink": "nohost"}, 1, "federated.superlink"),
    ({**ENABLED, "ca_cert": None}, 1, "federated.ca_cert: is required with superlink"),
    (ENABLED, 2, "federated.model: must name a configured model"),
    ({**ENABLED, "model": "nope"}, 1, "federated.model"),
    ({"holdout_fraction": 1.0}, 1, "federated.holdout_fraction: must be in (0, 1)"),
    ({"min_examples": 20, "max_examples": 10}, 1, "federated.max_examples: must be >="),
    ({"min_examples": 1}, 1, "federated.min_examples: must be an integer in [2,"),
    ({"max_load_per_cpu": -1}, 1, "federated.max_load_per_cpu"),
    ({"enable": True}, 1, "federated: unknown key(s): enable"),
])
def test_bad_federated_tables_name_the_key(tmp_path: Path, table: dict[str, Any],
                                           models: int, message: str) -> None:
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        parse(tmp_path, table, models=models)


def test_the_daemon_runs_the_supervisor_only_when_enabled(tmp_path: Path,
                                                          mlp_path: Path) -> None:
    def config(federated: dict[str, Any] | None) -> Any:
        data: dict[str, Any] = {
            "state_dir": str(tmp_path / "state"), "listen": "127.0.0.1:0",
            "flush_interval_s": 0.05, "telemetry": {"enabled": False},
            "models": [{"name": "mlp", "path": str(mlp_path), "version": "1.0"}]}
        if federated:
            data["federated"] = federated
        return parse_config(data, base_dir=tmp_path)

    with Daemon(config(None)) as daemon:
        assert daemon.federated is None
        assert daemon.health()["federated"] == {
            "state": "off", "reason": "federated training is configured off",
            "examples": 0, "restarts": 0}

    enabled = {**ENABLED, "superlink": "127.0.0.1:9", "min_examples": 5, "refresh_s": 1}
    daemon = Daemon(config(enabled))
    daemon.start()
    try:
        key = tmp_path / "state" / "federated" / "node.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600  # made on first start
        deadline = time.monotonic() + 20
        while daemon.health()["federated"]["state"] != "ineligible":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert daemon.health()["federated"]["reason"] == "too few labelled examples: 0 < 5"
        x = np.random.default_rng(0).uniform(-1, 1, (3, 1, N_FEATURES)).astype(np.float32)
        for row in x:
            pid, _, _ = daemon.predict("mlp", {"input": row})
            daemon.feedback(pid, 1)
        deadline = time.monotonic() + 20  # re-exported after refresh_s
        while daemon.health()["federated"]["examples"] != 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert daemon.health()["federated"]["state"] == "ineligible"
        supervisor = daemon.federated
    finally:
        daemon.stop()
    assert daemon.federated is None and supervisor.status()["state"] == "off"
