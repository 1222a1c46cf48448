"""``edgefleet agent enroll``: register this device with a fleet server."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("enroll")
@click.option("--server", "server_url", required=True, envvar="EDGEFLEET_SERVER",
              help="Fleet server URL, e.g. http://fleet.example:8080 (env EDGEFLEET_SERVER).")
@click.option("--token", required=True, envvar="EDGEFLEET_ENROLLMENT_TOKEN",
              help="One-time enrollment token from an operator "
                   "(env EDGEFLEET_ENROLLMENT_TOKEN keeps it out of the process list).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the agent keeps its state (default: $EDGEFLEET_STATE_DIR, "
                   "/var/lib/edgefleet as root, else ~/.local/state/edgefleet).")
@click.option("--name", default=None, help="Device name shown in the console (default: hostname).")
@click.option("--force", is_flag=True, help="Replace an existing enrollment with a new identity.")
def enroll_command(*, server_url: str, token: str, state_dir: Path | None, name: str | None,
                   force: bool) -> None:
    """Enroll this device: generate its key pair, register it, store its credentials.

    Writes enrollment.json and device_key.pem (both mode 0600) into the state directory.
    The broker password is stored there and never printed.
    """
    # Imported here so that `edgefleet --help` does not load cryptography.
    from edgefleet.agent.enroll import (
        EnrollmentError,
        default_state_dir,
        enroll,
    )

    target = state_dir if state_dir is not None else default_state_dir()
    try:
        result = enroll(server_url, token, target, force=force, name=name)
    except EnrollmentError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"enrolled as device {result.device_id}")
    click.echo(f"broker: {result.broker_url} (username {result.broker_username})")
    if result.group:
        click.echo(f"group: {result.group}")
    click.echo(f"state: {result.enrollment_path}")


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach ``agent enroll``."""
    groups["agent"].add_command(enroll_command)
