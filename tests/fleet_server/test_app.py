"""The app factory: no global app, features mounted, migrations applied, no fallback key."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from edgefleet.fleet_server import app as app_module
from edgefleet.fleet_server.app import FEATURES, all_components, create_app
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import load_secrets
from tests.fleet_server.support import Env


def test_features_and_components() -> None:
    assert FEATURES[0] == "edgefleet.fleet_server.auth"
    assert {"edgefleet.fleet_server.registry", "edgefleet.fleet_server.devices"} <= set(FEATURES)
    names = [c.name for c in all_components()]
    assert names[0] == "audit" and len(names) == len(set(names)) == len(FEATURES) + 1
    assert not any(isinstance(v, Flask) for v in vars(app_module).values()), "a global app"


def test_each_call_builds_an_independent_app(env: Env) -> None:
    config = load_config(env.init.data_dir, env={})
    other = create_app(config)
    try:
        assert other is not env.app
        assert other.extensions["edgefleet"] is not env.services
        assert other.config["SECRET_KEY"] == load_secrets(env.init.data_dir).session_key
        assert other.config["MAX_CONTENT_LENGTH"] == config.max_request_bytes
        assert other.config["SESSION_COOKIE_HTTPONLY"] is True
        assert other.config["SESSION_COOKIE_SECURE"] is True
    finally:
        other.extensions["edgefleet"].store.close()


def test_subset_of_features(tmp_path: Path, env: Env) -> None:
    app = create_app(load_config(env.init.data_dir, env={}),
                     features=["edgefleet.fleet_server.auth"])
    try:
        rules = {r.rule for r in app.url_map.iter_rules()}
        assert "/api/v1/users" in rules and "/api/v1/models" not in rules
        assert "/api/v1/audit" in rules and "/api/v1/openapi.json" in rules
    finally:
        app.extensions["edgefleet"].store.close()


def test_startup_applies_pending_migrations(env: Env) -> None:
    applied = {(r[0], r[1]) for r in env.services.store.db.execute(
        "SELECT component, version FROM schema_migrations")}
    for component in all_components():
        for version, _ in component.migrations:
            assert (component.name, version) in applied
