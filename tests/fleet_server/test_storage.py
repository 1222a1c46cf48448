"""Store: WAL, foreign keys, per-component versioned migrations, atomic transactions."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

from edgefleet.fleet_server.storage import Component, StorageError, Store


def _create_things(db: Database) -> None:
    db.execute("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")


def _add_colour(db: Database) -> None:
    db.execute("ALTER TABLE things ADD COLUMN colour TEXT")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "db.sqlite")
    yield s
    s.close()


def test_wal_and_foreign_keys(store: Store) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_migrations_apply_in_order_once(store: Store) -> None:
    v1 = Component("things", [(1, _create_things)])
    assert store.migrate([v1]) == [("things", 1)]
    assert store.migrate([v1]) == []
    v2 = Component("things", [(2, _add_colour), (1, _create_things)])
    assert store.migrate([v2]) == [("things", 2)]
    assert store.applied_versions("things") == [1, 2]
    assert "colour" in store.db.table("things").columns_dict


def test_migrations_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    first = Store.open(path)
    first.migrate([Component("things", [(1, _create_things)])])
    first.close()
    second = Store.open(path)
    assert second.migrate([Component("things", [(1, _create_things)])]) == []
    second.close()


def test_failed_migration_is_rolled_back(store: Store) -> None:
    def broken(db: Database) -> None:
        db.execute("CREATE TABLE half (id INTEGER)")
        db.execute("THIS IS NOT SQL")

    with pytest.raises(StorageError, match="broken v1"):
        store.migrate([Component("broken", [(1, broken)])])
    assert not store.db.table("half").exists()
    assert store.applied_versions("broken") == []


def test_duplicate_versions_refused(store: Store) -> None:
    with pytest.raises(StorageError, match="duplicate"):
        store.migrate([Component("x", [(1, _create_things), (1, _add_colour)])])


def test_transaction_is_atomic_and_nests(store: Store) -> None:
    store.migrate([Component("things", [(1, _create_things)])])
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.table("things").insert({"name": "a"})
        with store.transaction() as inner:
            inner.table("things").insert({"name": "b"})
        raise RuntimeError("abort")
    assert store.db.table("things").count == 0
    with store.transaction() as db:
        db.table("things").insert({"name": "a"})
        with store.transaction() as inner:
            inner.table("things").insert({"name": "b"})
    assert store.db.table("things").count == 2


def test_each_thread_gets_its_own_connection(store: Store) -> None:
    store.migrate([Component("things", [(1, _create_things)])])
    conns: list[object] = []

    def work() -> None:
        conns.append(store.db.conn)
        store.db.table("things").insert({"name": "t"})

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in conns}) == 3
    assert store.db.table("things").count == 3


def test_select_page_filters_and_counts(store: Store) -> None:
    store.migrate([Component("things", [(1, _create_things), (2, _add_colour)])])
    for i in range(5):
        store.db.table("things").insert({"name": f"n{i}", "colour": "red" if i % 2 else "blue"})
    rows, total = store.select_page("things", where={"colour": "blue", "name": None},
                                    order_by="id", limit=2, offset=1)
    assert total == 3
    assert [r["name"] for r in rows] == ["n2", "n4"]


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StorageError):
        Store.open(path)


def test_closed_store_refuses(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "db.sqlite")
    s.close()
    with pytest.raises((StorageError, sqlite3.ProgrammingError)):
        s.db.execute("SELECT 1")
