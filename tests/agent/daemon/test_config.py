"""agent.toml validation: every mistake is a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.daemon.config import InputPolicy, load_config
from edgefleet.agent.daemon.errors import ConfigError
from tests.agent.daemon.support import write_config

MODEL = {"name": "m", "path": "m.onnx", "version": "1.0"}


def load(tmp_path: Path, top: dict[str, Any], models: list[dict[str, Any]] | None = None,
         tables: dict[str, dict[str, Any]] | None = None) -> Any:
    path = write_config(tmp_path / "agent.toml", {"state_dir": "state", **top},
                        [MODEL] if models is None else models, tables)
    return load_config(path)


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load(tmp_path, {}, [{**MODEL, "inputs": "hash", "low_confidence": 0.5,
                                  "reference_profile": "p.json"}])
    assert config.state_dir == tmp_path / "state"
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8470)
    m = config.models[0]
    assert m.path == tmp_path / "m.onnx" and m.reference_profile == tmp_path / "p.json"
    assert m.inputs is InputPolicy.HASH and m.low_confidence == 0.5 and m.sample_rate == 0.01
    assert config.telemetry_enabled and not config.updates_enabled
    unix = load(tmp_path, {"listen": "unix:run/a.sock"})
    assert unix.listen.path == tmp_path / "run" / "a.sock"


@pytest.mark.parametrize(("top", "models", "tables", "message"), [
    ({}, [], None, "models: must be a non-empty array"),
    ({}, [MODEL, MODEL], None, "duplicate model name"),
    ({"listen": "0.0.0.0:80"}, None, None, "listen: must be a loopback address"),
    ({"listen": "192.168.1.2:80"}, None, None, "loopback"),
    ({"listen": "127.0.0.1"}, None, None, "listen: must be 'HOST:PORT'"),
    ({"listen": "127.0.0.1:99999"}, None, None, "listen"),
    ({"listen": "unix:"}, None, None, "needs a socket path"),
    ({"window_s": 0}, None, None, "window_s: must be a number >= 1.0"),
    ({"heartbeat_s": "30"}, None, None, "heartbeat_s"),
    ({"ring_size": 1.5}, None, None, "ring_size: must be an integer"),
    ({"typo": 1}, None, None, "unknown key(s): typo"),
    ({}, [{**MODEL, "sample_rate": 2}], None, "models[0].sample_rate: must be a number in"),
    ({}, [{**MODEL, "low_confidence": -1}], None, "models[0].low_confidence"),
    ({}, [{**MODEL, "inputs": "encrypt"}], None, "models[0].inputs: must be one of"),
    ({}, [{**MODEL, "name": "bad name"}], None, "models[0].name"),
    ({}, [{"name": "m", "version": "1"}], None, "models[0].path: is required"),
    ({}, [{**MODEL, "colour": "red"}], None, "models[0]: unknown key(s): colour"),
    ({}, None, {"telemetry": {"enabled": "yes"}}, "telemetry.enabled: must be true or false"),
    ({}, None, {"updates": {"enabled": True}}, "updates.model: is required"),
    ({}, None, {"updates": {"enabled": True, "model": "x"}}, "names no configured model"),
])
def test_invalid(tmp_path: Path, top: dict[str, Any], models: list[dict[str, Any]] | None,
                 tables: dict[str, dict[str, Any]] | None, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, top, models, tables)
    assert message in str(info.value)
    assert str(info.value).startswith("agent.toml: ")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("state_dir = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    no_state = tmp_path / "ns.toml"
    write_config(no_state, {}, [MODEL])
    with pytest.raises(ConfigError, match="state_dir: is required"):
        load_config(no_state)
