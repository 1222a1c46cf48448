"""Helpers of the ingest tests: an app with the ingest feature, drift objects, envelopes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.drift import ReferenceProfile, SummaryBuilder, WindowSummary
from edgefleet.agent.telemetry.envelope import Channel, Envelope, encode
from edgefleet.fleet_server.app import FEATURES, all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from tests.fleet_server.support import PASSWORD, ROLES, Env

INGEST = "edgefleet.fleet_server.ingest"
FEATURE_NAMES = list(FEATURES)  # the app mounts ingestion itself
MODEL, VERSION = "iris", "1.0.0"
FEATURE_COLUMNS = ["f0", "f1", "f2"]


def make_ingest_env(data_dir: Path, **config: Any) -> Env:
    """Like tests.fleet_server.support.make_env, with the ingest feature mounted."""
    init = init_data_dir(data_dir, all_components())
    config.setdefault("session_cookie_secure", False)
    app = create_app(load_config(data_dir, env={}, **config), features=FEATURE_NAMES)
    services = app.extensions["edgefleet"]
    env = Env(app, services, init)
    for role in ROLES:
        name = f"{role.value}1"
        user, _ = services.users.create(SYSTEM, name, role, PASSWORD)
        token, secret = services.tokens.create(SYSTEM, name=f"{name}-token", role=role,
                                               user_id=user.id, owner_role=role)
        env.tokens[role], env.token_ids[role] = secret, token.id
        env.user_ids[role], env.usernames[role] = user.id, name
    return env


def reference_profile(seed: int = 0) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, len(FEATURE_COLUMNS)))
    y = rng.uniform(size=(2000, 1))
    return ReferenceProfile.build(x, FEATURE_COLUMNS, y, ["score"], bins=10)


def window_summary(profile: ReferenceProfile, n: int = 500, seed: int = 1,
                   start: float = 1000.0) -> WindowSummary:
    rng = np.random.default_rng(seed)
    builder = SummaryBuilder(profile, VERSION)
    builder.add_batch(rng.normal(size=(n, len(FEATURE_COLUMNS))), rng.uniform(size=(n, 1)))
    return builder.finish(start, start + 60.0)


def lookup_for(profile: ReferenceProfile) -> Callable[[str, str], ReferenceProfile | None]:
    def lookup(model: str, version: str) -> ReferenceProfile | None:
        return profile if (model, version) == (MODEL, VERSION) else None

    return lookup


def envelope(channel: Channel, device: str, body: dict[str, Any], *, seq: int = 1,
             bd: int = 1, ts: float | None = None, historical: bool = False) -> bytes:
    return encode(Envelope(type=channel, device=device, bd=bd, seq=seq,
                           ts=time.time() if ts is None else ts, historical=historical,
                           body=body))


HEARTBEAT = {"uptime_s": 12.5, "rss_bytes": 1000, "cpu_percent": 1.5,
             "outbox": {"depth": 0, "bytes": 0, "dropped": 0},
             "inbound": {"rejected": 0, "dropped": 0},
             "models": {MODEL: {"predictions": 42, "latency_ms": {"p50": 0.8, "p95": 2.1}}}}
BIRTH = {"agent_version": "0.1.0", "runtimes": {"onnxruntime": "1.32"},
         "models": {MODEL: VERSION}, "hardware": {"system": "Linux", "cpu_count": 2}}

__all__ = ["Role"]
