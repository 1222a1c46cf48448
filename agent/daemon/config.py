"""``agent.toml``: the daemon's configuration, parsed with ``tomllib`` and validated.

Every error is a :class:`ConfigError` naming the file and the key, e.g.
``agent.toml: models[1].sample_rate: must be a number in [0, 1], got 2``. Unknown keys are
errors too (a typo must not silently fall back to a default). Relative paths are resolved
against the directory of the configuration file.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from edgefleet.agent.daemon.errors import ConfigError
from edgefleet.agent.federated.config import FederatedConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LOOPBACK_NAMES = ("localhost",)


class InputPolicy(StrEnum):
    """What prediction records sent to the fleet carry of the inputs."""

    KEEP = "keep"  # the input values
    HASH = "hash"  # sha256 of the inputs (equal inputs are recognizable, values are not)
    DROP = "drop"  # nothing


@dataclass(frozen=True)
class ListenAddress:
    """Either ``host``/``port`` on loopback or a unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ModelConfig:
    """One served model."""

    name: str
    path: Path
    version: str
    reference_profile: Path | None = None  # drift reference (ReferenceProfile JSON)
    sample_rate: float = 0.01  # fraction of predictions logged to the fleet
    low_confidence: float | None = None  # always log when max probability < this
    inputs: InputPolicy = InputPolicy.KEEP
    drift_output: str | None = None  # output summarized for drift (default: by width)
    confidence_output: str | None = None  # output holding probabilities (default: guessed)


@dataclass(frozen=True)
class DaemonConfig:
    """The whole daemon configuration (see docs/agent-daemon.md for an example file)."""

    state_dir: Path
    listen: ListenAddress
    models: tuple[ModelConfig, ...]
    window_s: float = 60.0  # drift summary window
    heartbeat_s: float = 30.0
    telemetry_enabled: bool = True
    updates_enabled: bool = False
    updates_model: str | None = None  # the model whose holder the update agent drives
    updates_interval_s: float = 60.0
    ring_size: int = 65_536  # predictions waiting for the flusher; beyond: dropped, counted
    flush_interval_s: float = 0.25
    max_records_per_message: int = 500
    max_request_bytes: int = 4 * 1024 * 1024
    feedback_max_rows: int = 100_000
    # [federated]: see docs/agent-federated.md
    federated: FederatedConfig = field(default_factory=FederatedConfig)

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def load_config(path: str | Path) -> DaemonConfig:
    """Read and validate ``agent.toml``.

    Raises:
        ConfigError: the file is missing, not TOML, or any value is invalid.
    """
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: cannot read it: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: not valid TOML: {e}") from e
    return parse_config(data, base_dir=file.resolve().parent, source=file.name)


def parse_config(data: dict[str, Any], *, base_dir: Path, source: str = "agent.toml"
                 ) -> DaemonConfig:
    """Validate an already parsed TOML document (``base_dir`` resolves relative paths).

    Raises:
        ConfigError: any value is invalid.
    """
    r = _Reader(data, source, "", base_dir)
    listen = _listen(r.text("listen", "127.0.0.1:8470"), r, base_dir)
    telemetry = r.table("telemetry")
    updates = r.table("updates")
    federated = r.table("federated")
    raw_models = r.raw("models")
    if not isinstance(raw_models, list) or not raw_models:
        r.fail("models", "must be a non-empty array of tables ([[models]])")
    models = tuple(_model(m, r.sub(f"models[{i}]", m)) for i, m in enumerate(raw_models))
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        r.fail("models", f"duplicate model name(s): {', '.join(dupes)}")
    config = DaemonConfig(
        state_dir=r.path("state_dir", required=True) or base_dir,
        listen=listen,
        models=models,
        window_s=r.number("window_s", 60.0, low=1.0),
        heartbeat_s=r.number("heartbeat_s", 30.0, low=1.0),
        telemetry_enabled=telemetry.flag("enabled", True),
        updates_enabled=updates.flag("enabled", False),
        updates_model=updates.optional_str("model"),
        updates_interval_s=updates.number("interval_s", 60.0, low=1.0),
        ring_size=r.integer("ring_size", 65_536, low=16, high=10_000_000),
        flush_interval_s=r.number("flush_interval_s", 0.25, low=0.01, high=60.0),
        max_records_per_message=r.integer("max_records_per_message", 500, low=1, high=100_000),
        max_request_bytes=r.integer("max_request_bytes", 4 * 1024 * 1024, low=1024,
                                high=1024 * 1024 * 1024),
        feedback_max_rows=r.integer("feedback_max_rows", 100_000, low=1, high=100_000_000),
        federated=_federated(federated, names),
    )
    telemetry.done()
    updates.done()
    r.done()
    if config.updates_enabled:
        if config.updates_model is None:
            updates.fail("model", "is required when updates are enabled (which model the "
                                  "update agent replaces)")
        if config.updates_model not in names:
            updates.fail("model", f"names no configured model: {config.updates_model!r}")
    return config


def _federated(r: _Reader, names: list[str]) -> FederatedConfig:
    """The ``[federated]`` table; what is required only matters when enabled."""
    model = r.optional_str("model")
    config = FederatedConfig(
        enabled=r.flag("enabled", False),
        superlink=r.optional_str("superlink") or "",
        ca_cert=r.path("ca_cert", required=False),
        node_key=r.path("node_key", required=False),
        model=model or (names[0] if len(names) == 1 else ""),
        min_examples=r.integer("min_examples", 10, low=2, high=100_000_000),
        max_examples=r.integer("max_examples", 10_000, low=2, high=100_000_000),
        holdout_fraction=r.number("holdout_fraction", 0.2, low=0.0, high=1.0),
        max_load_per_cpu=r.number("max_load_per_cpu", 1.0, low=0.0),
        refresh_s=r.number("refresh_s", 300.0, low=1.0),
    )
    r.done()
    if not 0.0 < config.holdout_fraction < 1.0:
        r.fail("holdout_fraction", f"must be in (0, 1), got {config.holdout_fraction}")
    if config.max_examples < config.min_examples:
        r.fail("max_examples", f"must be >= min_examples ({config.min_examples})")
    # Neither superlink nor ca_cert: the agent joins the fleet server's federation.
    if config.enabled and (config.superlink or config.ca_cert is not None):
        host, sep, port = config.superlink.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            r.fail("superlink", f"must be 'HOST:PORT' when enabled, got {config.superlink!r}")
        if config.ca_cert is None:
            r.fail("ca_cert", "is required with superlink (the SuperLink must use TLS)")
        if config.model not in names:
            r.fail("model", f"must name a configured model when enabled, got {config.model!r}")
    return config


def _listen(text: str, r: _Reader, base_dir: Path) -> ListenAddress:
    if text.startswith("unix:"):
        raw = text[len("unix:"):]
        if not raw:
            r.fail("listen", "unix: needs a socket path")
        path = Path(raw)
        return ListenAddress(path=path if path.is_absolute() else base_dir / path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        r.fail("listen", f"must be 'HOST:PORT' on loopback or 'unix:/path', got {text!r}")
    host = host.strip("[]")
    if host not in _LOOPBACK_NAMES:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            r.fail("listen", f"must be a loopback address (the API has no authentication), "
                             f"got {host!r}")
    return ListenAddress(host="127.0.0.1" if host == "localhost" else host, port=int(port_text))


def _model(data: object, r: _Reader) -> ModelConfig:
    name = r.text("name", None)
    if not _NAME.match(name):
        r.fail("name", f"must be 1-64 characters of [A-Za-z0-9._-], got {name!r}")
    version = r.text("version", None)
    if not _NAME.match(version):
        r.fail("version", f"must be 1-64 characters of [A-Za-z0-9._-], got {version!r}")
    policy_text = r.text("inputs", InputPolicy.KEEP.value)
    try:
        policy = InputPolicy(policy_text)
    except ValueError:
        r.fail("inputs", f"must be one of {[p.value for p in InputPolicy]}, got {policy_text!r}")
    low = r.raw("low_confidence")
    model = ModelConfig(
        name=name,
        path=r.path("path", required=True) or Path(),
        version=version,
        reference_profile=r.path("reference_profile", required=False),
        sample_rate=r.number("sample_rate", 0.01, low=0.0, high=1.0),
        low_confidence=None if low is None else r.number("low_confidence", 0.0, low=0.0,
                                                         high=1.0),
        inputs=policy,
        drift_output=r.optional_str("drift_output"),
        confidence_output=r.optional_str("confidence_output"),
    )
    r.done()
    return model


class _Reader:
    """Reads keys of one TOML table, remembering which were used (the rest are typos)."""

    def __init__(self, data: object, source: str, prefix: str, base_dir: Path) -> None:
        self.source = source
        self.prefix = prefix
        self.base_dir = base_dir
        if not isinstance(data, dict):
            self.fail("", "must be a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> NoReturn:
        where = ".".join(p for p in (self.prefix, key) if p)
        raise ConfigError(f"{self.source}: {where or '(top level)'}: {message}")

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def sub(self, key: str, data: object) -> _Reader:
        prefix = f"{self.prefix}.{key}" if self.prefix else key
        return _Reader(data, self.source, prefix, self.base_dir)

    def table(self, key: str) -> _Reader:
        value = self.raw(key)
        return self.sub(key, {} if value is None else value)

    def text(self, key: str, default: str | None) -> str:
        value = self.raw(key)
        if value is None:
            if default is None:
                self.fail(key, "is required")
            return default
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def optional_str(self, key: str) -> str | None:
        return None if self.raw(key) is None else self.text(key, None)

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return value

    def number(self, key: str, default: float, *, low: float | None = None,
               high: float | None = None) -> float:
        value = self.raw(key)
        if value is None:
            return default
        ok = isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value) and (low is None or value >= low) \
            and (high is None or value <= high)
        if not ok:
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            self.fail(key, f"must be a number {bounds}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.fail(key, f"must be an integer in [{low}, {high}], got {value!r}")
        return value

    def path(self, key: str, *, required: bool) -> Path | None:
        value = self.raw(key)
        if value is None and not required:
            return None
        text = self.text(key, None)
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            self.fail("", f"unknown key(s): {', '.join(unknown)}")
