"""Server configuration: defaults < TOML file < ``EDGEFLEET_*`` environment variables.

Every setting is one field of the frozen :class:`ServerConfig`; its environment variable is
``EDGEFLEET_`` plus the upper-cased field name. docs/configuration.md holds one table of all
settings, and a test checks that table against this dataclass. This module does no I/O
except reading the TOML file it is given (or ``<data_dir>/config.toml`` when it exists).
Secrets are never configuration: they live in the data dir's secrets file (see datadir.py).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "EDGEFLEET_"
CONFIG_FILENAME = "config.toml"
MIB = 1024 * 1024


class ConfigError(ValueError):
    """A configuration value is unknown, malformed or out of range (the operator's fault)."""


@dataclass(frozen=True)
class ServerConfig:
    """All settings of one fleet server process (units are in the names)."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # An external broker (mqtt://host:port); empty means run the embedded amqtt broker.
    mqtt_url: str = ""
    # The broker URL handed to devices at enrollment; empty means derive it.
    mqtt_public_url: str = ""
    max_request_bytes: int = 1 * MIB
    # waitress buffers up to this much of ANY request before the app sees it: keep it
    # moderate and put larger uploads behind a reverse proxy (docs/server.md).
    max_upload_bytes: int = 64 * MIB
    session_lifetime_s: int = 8 * 3600
    session_cookie_secure: bool = True
    api_token_ttl_s: int = 90 * 24 * 3600
    login_max_failures: int = 10
    login_max_failures_per_ip: int = 100
    login_window_s: float = 300.0
    housekeeping_interval_s: float = 60.0
    waitress_threads: int = 8
    log_level: str = "INFO"
    # Four eyes: nobody (admins included) approves their own upload for production.
    approval_requires_second_person: bool = True
    # Fleet drift: how often new drift windows are evaluated, and where alerts are sent.
    drift_evaluation_interval_s: float = 60.0
    drift_webhook_url: str = ""  # empty: no webhook
    drift_webhook_timeout_s: float = 5.0

    @property
    def db_path(self) -> Path:
        """The SQLite database file inside the data dir."""
        return self.data_dir / "edgefleet.db"

    @property
    def broker_url(self) -> str:
        """The broker URL devices should connect to."""
        if self.mqtt_public_url:
            return self.mqtt_public_url
        if self.mqtt_url:
            return self.mqtt_url
        return f"mqtt://{self.mqtt_host}:{self.mqtt_port}"


def env_var(field_name: str) -> str:
    """The environment variable that overrides ``field_name``."""
    return ENV_PREFIX + field_name.upper()


def setting_fields() -> list[dataclasses.Field[Any]]:
    """The fields that can be set from TOML / env (all but ``data_dir``)."""
    return [f for f in dataclasses.fields(ServerConfig) if f.name != "data_dir"]


def _coerce(name: str, kind: type, value: Any) -> Any:
    """Turn a TOML or env value into the field's type, or raise ConfigError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    try:
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from e
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def _field_type(f: dataclasses.Field[Any]) -> type:
    return _TYPES[str(f.type)]


def _validate(config: ServerConfig) -> None:
    for name in ("port", "mqtt_port"):
        value = getattr(config, name)
        if not 0 <= value <= 65535:
            raise ConfigError(f"{name}: {value} is not a TCP port")
    for name in ("max_request_bytes", "max_upload_bytes", "session_lifetime_s",
                 "api_token_ttl_s", "waitress_threads", "login_max_failures",
                 "login_max_failures_per_ip"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name}: must be positive")
    for name in ("housekeeping_interval_s", "login_window_s", "drift_evaluation_interval_s",
                 "drift_webhook_timeout_s"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name}: must be positive")
    if config.drift_webhook_url and not config.drift_webhook_url.startswith(
            ("http://", "https://")):
        raise ConfigError("drift_webhook_url: must start with http:// or https://")
    if config.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {sorted(_LOG_LEVELS)}")
    if config.mqtt_url and not config.mqtt_url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError("mqtt_url: must start with mqtt:// or mqtts://")


def load_config(
    data_dir: Path,
    toml_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServerConfig:
    """Build the configuration for ``data_dir``.

    Order: dataclass defaults, then the TOML file (``toml_path`` or ``data_dir/config.toml``
    when present), then ``EDGEFLEET_*`` variables from ``env`` (``os.environ`` when None),
    then ``overrides`` whose value is not None (command-line options).

    Raises:
        ConfigError: unknown key, wrong type, out-of-range value or unreadable TOML file.
    """
    fields = {f.name: f for f in setting_fields()}
    values: dict[str, Any] = {}
    path = toml_path if toml_path is not None else data_dir / CONFIG_FILENAME
    if toml_path is not None or path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        table = raw.get("server", raw)
        for key, value in table.items():
            if key not in fields:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, _field_type(fields[key]), value)
    environ = os.environ if env is None else env
    for name, f in fields.items():
        var = env_var(name)
        if var in environ:
            values[name] = _coerce(var, _field_type(f), environ[var])
    for name, value in overrides.items():
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = _coerce(name, _field_type(fields[name]), value)
    config = ServerConfig(data_dir=Path(data_dir), **values)
    _validate(config)
    return config
