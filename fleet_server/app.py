"""The Flask app factory: ``create_app(config, store=None)``.

No global app and no import-time configuration. The session key comes from the data
dir's secrets file written by ``edgefleet server init``; there is no fallback, so an
uninitialised data dir refuses to start. Each feature package in :data:`FEATURES`
exposes ``COMPONENT`` (its tables) and ``create_blueprint(services)`` (mounted under
/api/v1).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from types import ModuleType

from flask import Flask, Response, request

from edgefleet.fleet_server import audit as audit_module
from edgefleet.fleet_server.api.core import create_blueprint as core_blueprint
from edgefleet.fleet_server.api.errors import register_error_handlers
from edgefleet.fleet_server.api.json_provider import StrictJSONProvider
from edgefleet.fleet_server.api.openapi import API_PREFIX
from edgefleet.fleet_server.audit import AuditLog
from edgefleet.fleet_server.auth.tokens import TokenService
from edgefleet.fleet_server.auth.users import UserService
from edgefleet.fleet_server.config import ServerConfig
from edgefleet.fleet_server.datadir import Secrets, load_secrets
from edgefleet.fleet_server.services import BrokerControl, NoBrokerControl, Services
from edgefleet.fleet_server.storage import Component, Store

log = logging.getLogger(__name__)

FEATURES = [
    "edgefleet.fleet_server.auth",
    "edgefleet.fleet_server.registry",
    "edgefleet.fleet_server.devices",
    "edgefleet.fleet_server.updates",
    "edgefleet.fleet_server.ingest",
    "edgefleet.fleet_server.fleetdrift",
    "edgefleet.fleet_server.rollouts",
    "edgefleet.fleet_server.fljobs",
]


def feature_modules(names: Sequence[str] | None = None) -> list[ModuleType]:
    """The imported feature packages (``names`` or :data:`FEATURES`), in order."""
    return [importlib.import_module(name) for name in (FEATURES if names is None else names)]


def all_components() -> list[Component]:
    """Every component's migrations: the audit log first, then each feature's."""
    components: list[Component] = [audit_module.COMPONENT]
    components += [module.COMPONENT for module in feature_modules()]
    return components


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith(API_PREFIX):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def create_app(
    config: ServerConfig,
    store: Store | None = None,
    *,
    broker: BrokerControl | None = None,
    secrets: Secrets | None = None,
    features: Sequence[str] | None = None,
) -> Flask:
    """Build the server's Flask app for ``config``.

    ``store`` defaults to the data dir's database; pending migrations are applied.
    ``secrets`` defaults to the data dir's secrets file. ``broker`` lets features drop
    live broker connections (the embedded broker); ``features`` overrides
    :data:`FEATURES` (tests of a subset).

    Raises:
        DataDirError: the data dir is not initialised or its secrets file is unsafe.
        StorageError: the database cannot be opened or migrated.
    """
    secrets = secrets if secrets is not None else load_secrets(config.data_dir)
    if store is None:
        store = Store.open(config.db_path)
    modules = feature_modules(features)
    store.migrate([audit_module.COMPONENT, *[m.COMPONENT for m in modules]])

    app = Flask(__name__, static_folder=None)
    app.json = StrictJSONProvider(app)  # bodies: bounded depth, no NaN / Infinity
    app.config.update(
        SECRET_KEY=secrets.session_key,
        MAX_CONTENT_LENGTH=config.max_request_bytes,
        SESSION_COOKIE_NAME="session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=config.session_cookie_secure,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=config.session_lifetime_s),
        JSON_SORT_KEYS=False,
    )
    audit = AuditLog(store)
    services = Services(
        config=config, store=store, audit=audit,
        users=UserService(store, audit), tokens=TokenService(store, audit),
        broker=broker or NoBrokerControl(),
    )
    services.extras["broker_username"] = secrets.broker_username
    app.extensions["edgefleet"] = services
    register_error_handlers(app)
    app.after_request(_security_headers)
    app.register_blueprint(core_blueprint(services), url_prefix=API_PREFIX)
    for module in modules:
        app.register_blueprint(module.create_blueprint(services), url_prefix=API_PREFIX)
    log.debug("app created with features %s", [m.__name__ for m in modules])
    return app
