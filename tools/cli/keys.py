"""``edgefleet keys init|rotate``: the signing keys of the update repositories.

Thin layer over :mod:`edgefleet.fleet_server.updates` (python-tuf's Metadata API). Keys
of the image root, the image targets and the director root go to ``--offline-dir``
when given: keep that folder off the server once initialised.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.tools.cli.server import data_dir_option

_OFFLINE_HELP = ("Folder for the offline keys (image root, image targets, director root); "
                 "default: the server's own key folder.")


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach the ``keys`` group to the root command."""

    @cli.group("keys")
    def keys() -> None:
        """Create and rotate the update repositories' signing keys."""

    @keys.command("init")
    @data_dir_option
    @click.option("--offline-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=None, help=_OFFLINE_HELP)
    @click.option("--root-keys", type=click.IntRange(1, 15), default=3, show_default=True,
                  help="How many keys the image repository's root role gets.")
    @click.option("--root-threshold", type=click.IntRange(1, 15), default=2, show_default=True,
                  help="How many of them must sign a new root.")
    def init(data_dir: Path, offline_dir: Path | None, root_keys: int,
             root_threshold: int) -> None:
        """Create every key and sign the first metadata of both repositories.

        Private keys are written with mode 0600 and never printed.
        """
        from edgefleet.fleet_server.updates.errors import UpdatesError
        from edgefleet.fleet_server.updates.keys import KeyPolicy, init_keys
        from edgefleet.fleet_server.updates.repository import Repository

        if root_threshold > root_keys:
            raise click.BadParameter("the threshold cannot exceed the number of root keys",
                                     param_hint="--root-threshold")
        policy = KeyPolicy(image_root_keys=root_keys, image_root_threshold=root_threshold)
        try:
            signers = init_keys(data_dir / "keys", offline_dir, policy)
            Repository(data_dir / "repo", signers).initialise(policy)
        except (UpdatesError, OSError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"online keys:  {data_dir / 'keys'}")
        click.echo(f"offline keys: {offline_dir or data_dir / 'keys'}")
        click.echo(f"repositories: {data_dir / 'repo'} (image root: {root_threshold} of "
                   f"{root_keys} keys)")
        if offline_dir is not None:
            click.echo("Move the offline folder off this machine; bring it back only to "
                       "sign releases or rotate keys.")

    @keys.command("rotate")
    @click.argument("role", type=click.Choice(["root", "targets", "snapshot", "timestamp"]))
    @click.option("--repo", "kind", type=click.Choice(["image", "director"]), default="image",
                  show_default=True, help="Which repository's role to rotate.")
    @data_dir_option
    @click.option("--offline-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=None, help=_OFFLINE_HELP)
    def rotate(role: str, kind: str, data_dir: Path, offline_dir: Path | None) -> None:
        """Replace ROLE's key through a new root version; devices follow the rotation
        and refuse metadata signed by the old key from then on.
        """
        from edgefleet.fleet_server.updates.errors import UpdatesError
        from edgefleet.fleet_server.updates.keys import (
            OFFLINE_SLOTS,
            RepoKind,
            RoleName,
            load_signers,
        )
        from edgefleet.fleet_server.updates.repository import Repository

        repo_kind, role_name = RepoKind(kind), RoleName(role)
        online = data_dir / "keys"
        dirs = [online] if offline_dir is None else [online, offline_dir]
        if offline_dir is not None and (repo_kind, role_name) in OFFLINE_SLOTS:
            dirs.reverse()  # the new key of an offline role goes to the offline folder
        try:
            repo = Repository(data_dir / "repo", load_signers(dirs))
            new_ids = repo.rotate_key(repo_kind, role_name, dirs)
        except (UpdatesError, OSError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"{kind} {role}: new key(s) {', '.join(new_ids)} in {dirs[0]}")
