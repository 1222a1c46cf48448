"""``edgefleet server mosquitto-config``: generate Mosquitto's config, password and ACL files.

Thin layer over :mod:`edgefleet.fleet_server.broker.mosquitto`. The service user comes
from the data dir's secrets file; device credentials, for now, from a JSON file of
``{device_id: password}`` written by operators who provision devices outside the server
(the server's devices table stores only a sha256 of each broker password, which
Mosquitto cannot check; see docs/broker.md).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgefleet.tools.cli.server import data_dir_option

# (username, mosquitto_hash) pairs; a callable so tests and, later, the devices table
# can supply them.
EntrySource = Callable[[], list[tuple[str, str]]]


def load_device_passwords(path: Path) -> list[tuple[str, str]]:
    """Read ``{device_id: password}`` from a JSON file.

    Raises:
        click.ClickException: unreadable, not JSON, or not an object of strings.
    """
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot read {path}: {e}") from None
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise click.ClickException(
            f"{path} must hold a JSON object of device id -> password strings")
    return list(raw.items())


def entries_from_data_dir(data_dir: Path, devices_file: Path | None,
                          iterations: int) -> tuple[str, EntrySource]:
    """The service user (from ``secrets.json``) and a source of every password entry:
    the service user's, each device of ``devices_file`` (plaintext, for devices
    provisioned outside the server), then every active device enrolled with this server
    (from the hashes stored at enrollment: no plaintext involved)."""
    from edgefleet.fleet_server.broker.mosquitto import hash_password_entries
    from edgefleet.fleet_server.datadir import DataDirError, load_secrets

    try:
        found = load_secrets(data_dir)
    except DataDirError as e:
        raise click.ClickException(str(e)) from None

    def source() -> list[tuple[str, str]]:
        devices = load_device_passwords(devices_file) if devices_file is not None else []
        entries = hash_password_entries(found.broker_username, found.broker_password, devices,
                                        iterations=iterations)
        listed = {user for user, _ in entries}
        enrolled = [(user, h) for user, h in _enrolled_entries(data_dir) if user not in listed]
        return entries + enrolled

    return found.broker_username, source


def _enrolled_entries(data_dir: Path) -> list[tuple[str, str]]:
    from edgefleet.fleet_server.audit import AuditLog
    from edgefleet.fleet_server.devices.service import DeviceService
    from edgefleet.tools.cli.server import open_store

    store = open_store(data_dir)
    try:
        return DeviceService(store, AuditLog(store)).mosquitto_entries()
    finally:
        store.close()


def reload_mosquitto(pid_file: Path) -> int:
    """Send SIGHUP to the Mosquitto whose pid ``pid_file`` holds; return the pid.

    Raises:
        click.ClickException: no readable pid, or no such process.
    """
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot reload Mosquitto via {pid_file}: {e}") from None
    return pid


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach ``mosquitto-config`` to the ``server`` group."""
    server = groups["server"]

    @server.command("mosquitto-config")
    @data_dir_option
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                  required=True, help="Directory for mosquitto.conf, edgefleet.passwd, "
                  "edgefleet.acl (created; files mode 0600, replaced atomically).")
    @click.option("--devices", "devices_file",
                  type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help="JSON object {device_id: broker password} of externally "
                  "provisioned devices (default: service user only).")
    @click.option("--port", "listener_port", type=click.IntRange(1, 65535), default=1883,
                  show_default=True, help="Mosquitto listener port.")
    @click.option("--bind", "bind_address", default=None,
                  help="Listen address (default: every interface).")
    @click.option("--persistence-dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Keep retained messages and sessions here (default: in memory).")
    @click.option("--run-as", "run_as_user", default=None,
                  help="Mosquitto `user` setting; it must be able to read the files "
                  "(default: Mosquitto's own, `mosquitto`).")
    @click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path),
                  help="Mosquitto `pid_file` setting, also used by --reload.")
    @click.option("--reload", "reload_", is_flag=True,
                  help="After writing, send SIGHUP to the pid in --pid-file so Mosquitto "
                  "re-reads the password and ACL files.")
    @click.option("--iterations", type=click.IntRange(min=1), default=101, show_default=True,
                  help="PBKDF2 iterations of each $7$ hash (Mosquitto's default).")
    def mosquitto_config(*, data_dir: Path, out_dir: Path, devices_file: Path | None,
                         listener_port: int, bind_address: str | None,
                         persistence_dir: Path | None, run_as_user: str | None,
                         pid_file: Path | None, reload_: bool, iterations: int) -> None:
        """Write Mosquitto 2.x files enforcing the edgefleet broker policy.

        The service user (from the data dir's secrets) may use edgefleet/v1/#; each
        device (username = device id) only edgefleet/v1/d/<device_id>/#; anonymous
        clients are refused. Re-run after enrolling or removing devices, with --reload
        (or kill -HUP the broker). See docs/broker.md.
        """
        from edgefleet.fleet_server.broker.mosquitto import (
            MosquittoConfigError,
            write_mosquitto_config,
        )

        if reload_ and pid_file is None:
            raise click.ClickException("--reload needs --pid-file")
        service_user, source = entries_from_data_dir(data_dir, devices_file, iterations)
        try:
            files = write_mosquitto_config(
                out_dir, listener_port, service_user, source(), bind_address=bind_address,
                persistence_dir=persistence_dir.resolve() if persistence_dir else None,
                pid_file=pid_file.resolve() if pid_file else None, run_as_user=run_as_user)
        except (MosquittoConfigError, OSError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"Wrote {files.conf}")
        click.echo(f"      {files.password_file}")
        click.echo(f"      {files.acl_file}")
        if reload_ and pid_file is not None:
            pid = reload_mosquitto(pid_file)
            click.echo(f"Sent SIGHUP to Mosquitto (pid {pid})")
