"""server init's library side: secrets file (0600, no fixed secret), DB, first admin."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.auth.passwords import verify_password
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import (
    BROKER_SERVICE_USER,
    DataDirError,
    init_data_dir,
    load_secrets,
)
from edgefleet.fleet_server.storage import Store


def test_init_creates_private_secrets_db_and_admin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = init_data_dir(data, all_components())
    assert os.stat(data).st_mode & 0o777 == 0o700
    assert os.stat(result.secrets_path).st_mode & 0o777 == 0o600
    assert os.stat(result.db_path).st_mode & 0o777 == 0o600
    secrets = load_secrets(data)
    assert len(secrets.session_key) >= 64 and secrets.broker_username == BROKER_SERVICE_USER
    assert result.admin_password not in result.secrets_path.read_text()
    assert result.admin_password not in repr(result) and secrets.session_key not in repr(secrets)
    store = Store.open(result.db_path)
    try:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = next(store.db.table("broker_accounts").rows)
        assert verify_password(secrets.broker_password, row["password_hash"])
        admin = next(store.db.table("users").rows)
        assert admin["role"] == "admin" and admin["must_change_password"] == 1
        assert {c.name for c in all_components()} <= {
            r[0] for r in store.db.execute("SELECT component FROM schema_migrations")}
    finally:
        store.close()


def test_every_init_generates_different_secrets(tmp_path: Path) -> None:
    a = init_data_dir(tmp_path / "a", all_components())
    b = init_data_dir(tmp_path / "b", all_components())
    sa, sb = load_secrets(a.data_dir), load_secrets(b.data_dir)
    assert sa.session_key != sb.session_key and sa.broker_password != sb.broker_password
    assert a.admin_password != b.admin_password


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_data_dir(tmp_path, all_components())
    before = (tmp_path / "secrets.json").read_text()
    with pytest.raises(DataDirError, match="already initialised"):
        init_data_dir(tmp_path, all_components())
    assert (tmp_path / "secrets.json").read_text() == before


def test_app_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="server init"):
        create_app(load_config(tmp_path, env={}))


def test_unsafe_or_broken_secrets_file_refused(tmp_path: Path) -> None:
    init_data_dir(tmp_path, all_components())
    path = tmp_path / "secrets.json"
    os.chmod(path, 0o644)
    with pytest.raises(DataDirError, match="owner only"):
        load_secrets(tmp_path)
    os.chmod(path, 0o600)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "session_key": "short"}))
    with pytest.raises(DataDirError, match="short"):
        load_secrets(tmp_path)
    path.write_text("{not json")
    with pytest.raises(DataDirError, match="malformed"):
        load_secrets(tmp_path)
