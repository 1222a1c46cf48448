"""``edgefleet agent run``: the device daemon (local prediction API, logging, drift)."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.command("run")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The daemon's agent.toml (see docs/agent-daemon.md).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, help="Logging verbosity (stderr).")
def run_command(*, config_path: Path, log_level: str) -> None:
    """Run the device daemon until SIGTERM or Ctrl-C.

    Serves POST /v1/predict, POST /v1/feedback and GET /v1/health on 127.0.0.1 or a
    unix socket, logs and samples every prediction, summarizes drift per window and
    sends both to the fleet over MQTT when the device is enrolled.
    """
    from edgefleet.agent.daemon.config import load_config
    from edgefleet.agent.daemon.daemon import Daemon
    from edgefleet.agent.daemon.errors import DaemonError

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path)
        daemon = Daemon(config)
        daemon.run_until_signal()
    except DaemonError as e:
        raise click.ClickException(str(e)) from e


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    groups["agent"].add_command(run_command)
