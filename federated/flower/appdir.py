"""Generate the Flower app project (the directory a FAB is built from).

Flower runs apps from a project directory whose ``pyproject.toml`` has a
``[tool.flwr.app]`` table naming the ServerApp and ClientApp components and declaring
every run-config key. Our components live in the installed ``edgefleet`` package, so the
project holds only that file: SuperExec loads ``edgefleet.federated.flower.apps`` from
the environment it runs in (the same venv as the SuperLink and SuperNodes), and runtime
dependency installation stays disabled.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgefleet.federated.flower.config import DEFAULT_RUN_CONFIG, ConfigValue

APP_NAME = "edgefleet-fl"
APP_VERSION = "1.0.0"
PUBLISHER = "edgefleet"
SERVER_APP = "edgefleet.federated.flower.apps:server_app"
CLIENT_APP = "edgefleet.federated.flower.apps:client_app"


def pyproject_text(defaults: dict[str, ConfigValue] | None = None) -> str:
    """The app's ``pyproject.toml`` with ``defaults`` (default: DEFAULT_RUN_CONFIG)."""
    config = DEFAULT_RUN_CONFIG if defaults is None else defaults
    lines = [
        "[build-system]",
        'requires = ["setuptools>=77"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f'name = "{APP_NAME}"',
        f'version = "{APP_VERSION}"',
        'description = "edgefleet federated rounds (components live in the edgefleet package)"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        f'publisher = "{PUBLISHER}"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVER_APP}"',
        f'clientapp = "{CLIENT_APP}"',
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f'"{key}" = {_toml_value(value)}' for key, value in config.items()]
    return "\n".join(lines) + "\n"


def write_app_dir(directory: Path) -> Path:
    """Create (or refresh) the app project in ``directory``; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(pyproject_text())
    return directory


def _toml_value(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string
