"""``edgefleet server init|run|token``: set up and run the fleet server.

Thin layer over :mod:`edgefleet.fleet_server.datadir` and :mod:`...server`; flask,
waitress and amqtt are imported inside the commands.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

DATA_DIR_HELP = "Server data directory (database, secrets, config.toml)."
DEFAULT_DATA_DIR = "edgefleet-data"


def data_dir_option(fn: Any) -> Any:
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR, show_default=True, envvar="EDGEFLEET_DATA_DIR",
        show_envvar=True, help=DATA_DIR_HELP,
    )(fn)


def _load_config(data_dir: Path, config_file: Path | None = None, **overrides: Any) -> Any:
    from edgefleet.fleet_server.config import ConfigError, load_config

    try:
        return load_config(data_dir, config_file, **overrides)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def open_store(data_dir: Path) -> Any:
    """The store of an initialised data dir, migrated; ClickException otherwise."""
    from edgefleet.fleet_server.app import all_components
    from edgefleet.fleet_server.datadir import DataDirError, load_secrets
    from edgefleet.fleet_server.storage import StorageError, Store

    try:
        load_secrets(data_dir)
        config = _load_config(data_dir)
        store = Store.open(config.db_path)
        store.migrate(all_components())
    except (DataDirError, StorageError) as e:
        raise click.ClickException(str(e)) from None
    return store


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach ``init``, ``run`` and the ``token`` subgroup to the ``server`` group."""
    server = groups["server"]

    @server.command("init")
    @data_dir_option
    def init(data_dir: Path) -> None:
        """Create the database, generate every secret and the first admin account.

        The admin's one-time password is printed once; it must be changed at first login.
        """
        from edgefleet.fleet_server.app import all_components
        from edgefleet.fleet_server.datadir import DataDirError, init_data_dir
        from edgefleet.fleet_server.storage import StorageError

        try:
            result = init_data_dir(data_dir, all_components())
        except (DataDirError, StorageError, OSError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"Initialised {result.data_dir}")
        click.echo(f"  database: {result.db_path}")
        click.echo(f"  secrets:  {result.secrets_path} (mode 0600, keep it private)")
        click.echo(f"First admin: {result.admin_username}")
        click.echo(f"One-time password (shown only now): {result.admin_password}")

    @server.command("run")
    @data_dir_option
    @click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                  help="TOML settings file (default: <data-dir>/config.toml if present).")
    @click.option("--host", help="HTTP listen address (setting: host).")
    @click.option("--port", type=int, help="HTTP port (setting: port).")
    @click.option("--mqtt-port", type=int,
                  help="Embedded MQTT broker port (setting: mqtt_port).")
    @click.option("--mqtt-url", help="Use this external broker (mqtt://host:port) "
                  "instead of the embedded one (setting: mqtt_url).")
    def run(*, data_dir: Path, config_file: Path | None, host: str | None, port: int | None,
            mqtt_port: int | None, mqtt_url: str | None) -> None:
        """Serve the API with waitress, the embedded MQTT broker and the scheduler.

        Stops cleanly on SIGTERM or Ctrl-C.
        """
        from edgefleet.fleet_server.datadir import DataDirError
        from edgefleet.fleet_server.server import ServerError, run_server
        from edgefleet.fleet_server.storage import StorageError

        config = _load_config(data_dir, config_file, host=host, port=port,
                              mqtt_port=mqtt_port, mqtt_url=mqtt_url)
        logging.basicConfig(level=config.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")

        def ready(srv: Any) -> None:
            click.echo(f"edgefleet server listening on {srv.http_url} (MQTT {srv.mqtt_url})",
                       err=True)

        try:
            run_server(config, on_ready=ready)
        except (ServerError, DataDirError, StorageError) as e:
            raise click.ClickException(str(e)) from None
        click.echo("edgefleet server stopped", err=True)

    @server.group("token")
    def token() -> None:
        """Manage API tokens from the server machine (owner-less tokens)."""

    @token.command("create")
    @data_dir_option
    @click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True,
                  help="The token's role.")
    @click.option("--name", default="cli", show_default=True, help="A label for the token.")
    @click.option("--scope", "scopes", type=click.Choice(["read", "write"]), multiple=True,
                  help="Repeat for several; default: read and write.")
    @click.option("--ttl-s", type=click.IntRange(min=60), default=None,
                  help="Lifetime in seconds (default: setting api_token_ttl_s).")
    def token_create(*, data_dir: Path, role: str, name: str, scopes: tuple[str, ...],
                     ttl_s: int | None) -> None:
        """Create an API token; its secret is printed once (stdout) and never stored."""
        from edgefleet.fleet_server.audit import Actor, ActorKind, AuditLog
        from edgefleet.fleet_server.auth.roles import Role, Scope
        from edgefleet.fleet_server.auth.tokens import TokenService

        store = open_store(data_dir)
        try:
            config = _load_config(data_dir)
            actor = Actor(ActorKind.SYSTEM, "cli", "server-cli", "admin")
            tokens = TokenService(store, AuditLog(store))
            created, secret = tokens.create(
                actor, name=name, role=Role(role), user_id=None, owner_role=None,
                scopes=[Scope(s) for s in scopes] or [Scope.READ, Scope.WRITE],
                ttl_s=ttl_s or config.api_token_ttl_s,
            )
        finally:
            store.close()
        click.echo(f"token {created.id} ({role}, expires {created.expires_at})", err=True)
        click.echo(secret)

    @token.command("list")
    @data_dir_option
    def token_list(data_dir: Path) -> None:
        """List API tokens (never their secrets)."""
        from edgefleet.fleet_server.audit import AuditLog
        from edgefleet.fleet_server.auth.tokens import TokenService

        store = open_store(data_dir)
        try:
            items, _ = TokenService(store, AuditLog(store)).list(limit=500)
        finally:
            store.close()
        for t in items:
            state = "revoked" if t.revoked_at else f"expires {t.expires_at or 'never'}"
            click.echo(f"{t.id}\t{t.role.value}\t{t.name}\t{state}")

    @token.command("revoke")
    @data_dir_option
    @click.argument("token_id")
    def token_revoke(data_dir: Path, token_id: str) -> None:
        """Revoke the API token TOKEN_ID."""
        from edgefleet.fleet_server.audit import Actor, ActorKind, AuditLog
        from edgefleet.fleet_server.auth.errors import NotFound
        from edgefleet.fleet_server.auth.tokens import TokenService

        store = open_store(data_dir)
        try:
            actor = Actor(ActorKind.SYSTEM, "cli", "server-cli", "admin")
            TokenService(store, AuditLog(store)).revoke(actor, token_id)
        except NotFound as e:
            raise click.ClickException(str(e)) from None
        finally:
            store.close()
        click.echo(f"revoked {token_id}")
