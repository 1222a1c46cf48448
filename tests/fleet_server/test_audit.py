"""The audit log: append-only (triggers), redacted secrets, filters, newest first."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgefleet.fleet_server.audit import (
    COMPONENT,
    REDACTED,
    SYSTEM,
    Actor,
    ActorKind,
    AuditLog,
    redact,
)
from edgefleet.fleet_server.storage import Store

ALICE = Actor(ActorKind.USER, "u1", "alice", "admin")


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    store = Store.open(tmp_path / "db.sqlite")
    store.migrate([COMPONENT])
    yield AuditLog(store)
    store.close()


def test_record_and_list(log: AuditLog) -> None:
    first = log.record(ALICE, "user.create", "user", "u2", None, {"username": "bob"})
    log.record(SYSTEM, "device.decommission", "device", "d1", {"status": "active"},
               {"status": "decommissioned"})
    items, total = log.list()
    assert total == 2
    assert [i["action"] for i in items] == ["device.decommission", "user.create"]
    entry = items[1]
    assert entry["id"] == first
    assert entry["actor"] == {"kind": "user", "id": "u1", "name": "alice", "role": "admin"}
    assert entry["before"] is None and entry["after"] == {"username": "bob"}
    assert entry["ts"].endswith("+00:00")


def test_filters(log: AuditLog) -> None:
    for i in range(3):
        log.record(ALICE, "thing.update", "thing", f"t{i}", {"n": i}, {"n": i + 1})
    log.record(SYSTEM, "thing.create", "thing", "t9", None, {})
    assert log.list(actor_id="u1")[1] == 3
    assert log.list(action="thing.create")[1] == 1
    assert [e["target_id"] for e in log.list(target_type="thing", target_id="t1")[0]] == ["t1"]
    page, total = log.list(limit=2, offset=1)
    assert total == 4 and [e["target_id"] for e in page] == ["t2", "t1"]
    assert log.list(since="2000-01-01T00:00:00+00:00")[1] == 4
    assert log.list(until="2000-01-01T00:00:00+00:00")[1] == 0


@pytest.mark.parametrize("sql", [
    "UPDATE audit_log SET action = 'forged'",
    "DELETE FROM audit_log",
    "UPDATE audit_log SET after = NULL WHERE id = 1",
])
def test_history_cannot_be_rewritten(log: AuditLog, sql: str) -> None:
    log.record(ALICE, "user.create", "user", "u2", None, {"username": "bob"})
    store: Store = log._store
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute(sql)
    assert log.list()[0][0]["action"] == "user.create"


def test_record_joins_caller_transaction(log: AuditLog) -> None:
    store: Store = log._store
    with pytest.raises(RuntimeError), store.transaction():
        log.record(ALICE, "x", "t", "1")
        raise RuntimeError("change failed")
    assert log.list()[1] == 0


def test_secrets_are_redacted_before_storage(log: AuditLog) -> None:
    log.record(ALICE, "user.create", "user", "u2", None, {
        "username": "bob", "password": "hunter2hunter2", "token_hash": "abc",
        "nested": [{"broker_password": "pw"}], "must_change_password": True,
        "secret": "s3cr3t",
    })
    after = log.list()[0][0]["after"]
    assert after["username"] == "bob"
    assert after["password"] == after["token_hash"] == after["secret"] == REDACTED
    assert after["nested"] == [{"broker_password": REDACTED}]
    assert after["must_change_password"] is True
    raw = "".join(str(r) for r in log._store.db.execute("SELECT * FROM audit_log").fetchall())
    assert "hunter2" not in raw and "s3cr3t" not in raw


def test_redact_leaves_plain_values() -> None:
    assert redact({"a": 1, "b": [1, "x"]}) == {"a": 1, "b": [1, "x"]}
