"""The ``edgefleet`` command: a thin click layer over library calls.

Each command group lives in its own module; this module only assembles them. Library
errors are turned into one-line messages and non-zero exit codes at this edge.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from edgefleet.agent import agent_version

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(agent_version(), "--version", prog_name="edgefleet")
def cli() -> None:
    """edgefleet: run, watch, update and federate ML models on edge fleets."""


@cli.group()
def agent() -> None:
    """Commands that run on a device: predict, enroll, run the daemon."""


@cli.group()
def model() -> None:
    """Inspect, quantize and benchmark model files."""


@cli.group()
def server() -> None:
    """Initialise and run the fleet server."""


GROUPS: dict[str, click.Group] = {"agent": agent, "model": model, "server": server}


def _register() -> None:
    """Attach the commands defined in the sibling modules to their groups.

    Every module in this package (other than ``__main__``) defines
    ``register(cli, groups)``. Modules import only click and the standard library at
    the top; heavy libraries (onnxruntime, flask, ...) are imported inside the commands
    so that ``edgefleet --help`` stays fast on a device.
    """
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(cli, GROUPS)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="edgefleet")
