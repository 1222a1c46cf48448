"""How the running server holds the update repositories: key reloads and the refresh job."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edgefleet.fleet_server.updates import jobs, updates_repository
from edgefleet.fleet_server.updates.keys import RepoKind, RoleName, init_keys
from edgefleet.fleet_server.updates.repository import Repository


def signers_on_disk(data_dir: Path) -> Any:
    from edgefleet.fleet_server.updates.keys import load_signers

    return load_signers([data_dir / "keys"])


def _services(data_dir: Path) -> Any:
    return SimpleNamespace(config=SimpleNamespace(data_dir=data_dir), extras={})


def test_keys_are_reloaded_when_the_key_folder_changes(tmp_path: Path) -> None:
    services = _services(tmp_path)
    Repository(tmp_path / "repo", init_keys(tmp_path / "keys")).initialise()
    first = updates_repository(services)
    assert updates_repository(services) is first  # unchanged keys: the same instance

    slot = (RepoKind.DIRECTOR, RoleName.TARGETS)
    old_ids = {k.keyid for k in first.signers.public_keys(*slot)}
    # What `edgefleet keys rotate` does from another process: a new key file, old one gone.
    Repository(tmp_path / "repo", signers_on_disk(tmp_path)).rotate_key(*slot, [tmp_path / "keys"])
    second = updates_repository(services)
    assert second is not first
    new_ids = {k.keyid for k in second.signers.public_keys(*slot)}
    assert new_ids and not (new_ids & old_ids)


def test_refresh_job_waits_for_keys_init_then_re_signs(tmp_path: Path) -> None:
    services = _services(tmp_path)
    [(name, interval_s, refresh)] = jobs(services)
    assert name == "updates.refresh_expiring" and interval_s > 0
    refresh()  # no repositories yet: nothing to do, no error
    assert "updates" not in services.extras
    Repository(tmp_path / "repo", init_keys(tmp_path / "keys")).initialise()
    refresh()
    assert isinstance(services.extras["updates"], Repository)
