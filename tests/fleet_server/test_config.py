"""ServerConfig: defaults < TOML < EDGEFLEET_* env < overrides; the docs table matches."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from edgefleet.fleet_server.app import all_components
from edgefleet.fleet_server.config import (
    MIB,
    ConfigError,
    ServerConfig,
    env_var,
    load_config,
    setting_fields,
)
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.server import FleetServer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(\w+)` \| `(\w+)` \| (\w+) \| `([^`]*)` \|")


def test_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path, env={})
    assert config == ServerConfig(data_dir=tmp_path)
    assert config.db_path == tmp_path / "edgefleet.db"
    assert config.broker_url == "mqtt://127.0.0.1:1883"


def test_precedence_default_toml_env_override(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[server]\nport = 9001\nhost = "0.0.0.0"\nmqtt_port = 2000\nlog_level = "DEBUG"\n')
    env = {"EDGEFLEET_PORT": "9002", "EDGEFLEET_MQTT_PORT": "2001",
           "EDGEFLEET_SESSION_COOKIE_SECURE": "false"}
    config = load_config(tmp_path, env=env, mqtt_port=2002, host=None)
    assert config.host == "0.0.0.0"  # TOML (override None is ignored)
    assert config.port == 9002  # env beats TOML
    assert config.mqtt_port == 2002  # override beats env
    assert config.log_level == "DEBUG"  # TOML beats default
    assert config.session_cookie_secure is False
    assert config.max_request_bytes == ServerConfig.max_request_bytes  # default


def test_explicit_toml_path_and_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text("housekeeping_interval_s = 2.5\n")
    assert load_config(tmp_path, path, env={}).housekeeping_interval_s == 2.5


def test_external_broker_url(tmp_path: Path) -> None:
    config = load_config(tmp_path, env={"EDGEFLEET_MQTT_URL": "mqtt://broker:1884"})
    assert config.broker_url == "mqtt://broker:1884"
    public = load_config(tmp_path, env={"EDGEFLEET_MQTT_PUBLIC_URL": "mqtt://pub:1"})
    assert public.broker_url == "mqtt://pub:1"


@pytest.mark.parametrize(("toml", "env", "message"), [
    ("nonsense = 1\n", {}, "unknown setting 'nonsense'"),
    ("port = 'abc'\n", {}, "port: expected int"),
    ("", {"EDGEFLEET_PORT": "70000"}, "not a TCP port"),
    ("", {"EDGEFLEET_SESSION_COOKIE_SECURE": "maybe"}, "expected a boolean"),
    ("", {"EDGEFLEET_MAX_REQUEST_BYTES": "0"}, "must be positive"),
    ("", {"EDGEFLEET_MQTT_URL": "http://x"}, "must start with mqtt://"),
    ("", {"EDGEFLEET_LOG_LEVEL": "chatty"}, "log_level"),
    ("port = [", {}, "cannot read config file"),
])
def test_invalid_values_are_refused(tmp_path: Path, toml: str, env: dict[str, str],
                                    message: str) -> None:
    if toml:
        (tmp_path / "config.toml").write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path, env=env)


def test_unknown_override_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path, env={}, nonsense=1)


def _docs_rows() -> dict[str, tuple[str, str, str]]:
    rows: dict[str, tuple[str, str, str]] = {}
    for line in DOCS.read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} documented twice"
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return rows


def test_docs_table_lists_every_setting_with_env_type_and_default() -> None:
    rows = _docs_rows()
    fields = {f.name: f for f in setting_fields()}
    assert set(rows) == set(fields), "docs/configuration.md table and ServerConfig differ"
    for name, f in fields.items():
        env, kind, default = rows[name]
        assert env == env_var(name)
        assert kind == f.type
        assert f.default is not dataclasses.MISSING
        expected = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
        assert default.strip('"') == expected or (default == '""' and f.default == ""), name


def test_every_documented_env_var_is_read(tmp_path: Path) -> None:
    values = {"str": "mqtt://h:1", "int": "7", "float": "1.5", "bool": "false"}
    for name, (env, kind, _) in _docs_rows().items():
        value = values[kind] if name in {"mqtt_url", "mqtt_public_url"} or kind != "str" \
            else "DEBUG" if name == "log_level" \
            else "https://hooks.example/drift" if name == "drift_webhook_url" else "x"
        config = load_config(tmp_path, env={env: value})
        assert str(getattr(config, name)).lower() == value.lower(), name


def test_upload_limit_defaults_to_64_mib_and_caps_waitress(tmp_path: Path) -> None:
    """S4: waitress spooled up to max_upload_bytes (512 MiB) for any anonymous request."""
    assert load_config(tmp_path, env={}).max_upload_bytes == 64 * MIB
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, all_components())
    # An external broker URL: no embedded broker is started (nothing listens there).
    config = load_config(data_dir, env={}, port=0, mqtt_url="mqtt://127.0.0.1:9")
    server = FleetServer(config)
    try:
        server.start()
        assert server._http.adj.max_request_body_size == config.max_upload_bytes
    finally:
        server.stop()


def test_drift_webhook_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="drift_webhook_url"):
        load_config(tmp_path, env={"EDGEFLEET_DRIFT_WEBHOOK_URL": "file:///etc/passwd"})
