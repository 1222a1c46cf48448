"""``edgefleet demo``: the narrated end-to-end run (see :mod:`edgefleet.tools.demo`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where models, server data and device state go (default: a new temp dir).")
@click.option("--keep-running", is_flag=True,
              help="Leave the fleet server running at the end until Ctrl-C.")
@click.option("--port", "http_port", type=int, default=None,
              help="HTTP port for the demo's fleet server (default: a free one).")
@click.option("--mqtt-port", type=int, default=None,
              help="Embedded MQTT broker port (default: a free one).")
def demo_command(workdir: Path | None, keep_running: bool, http_port: int | None,
                 mqtt_port: int | None) -> None:
    """Run the demo: train, quantize, bench and predict a model; start a fleet server with
    its embedded broker, release a signed update to an enrolled device, then run three
    agent daemons under live traffic through a staged rollout and a rollout that the
    output-drift gate stops and rolls back, and a federated round on those agents' own
    labelled data that registers a new model version with its lineage.
    """
    from edgefleet.tools.demo import DemoError, DemoOptions, run_demo

    options = DemoOptions(workdir=workdir, keep_running=keep_running,
                          http_port=http_port, mqtt_port=mqtt_port)
    try:
        run_demo(options, click.echo)
    except DemoError as e:
        raise click.ClickException(str(e)) from None


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach ``demo`` to the root command."""
    cli.add_command(demo_command)
