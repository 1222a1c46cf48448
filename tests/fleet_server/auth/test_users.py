"""Users: scrypt passwords, one-time passwords, roles, disable, last-admin protection."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.fleet_server.audit import COMPONENT as AUDIT
from edgefleet.fleet_server.audit import SYSTEM, AuditLog
from edgefleet.fleet_server.auth.errors import Conflict, InvalidCredentials, NotFound
from edgefleet.fleet_server.auth.passwords import WeakPasswordError
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.auth.schema import COMPONENT as AUTH
from edgefleet.fleet_server.auth.users import UserService
from edgefleet.fleet_server.storage import Store

PW = "a long enough password"


@pytest.fixture
def users(tmp_path: Path) -> UserService:
    store = Store.open(tmp_path / "db.sqlite")
    store.migrate([AUDIT, AUTH])
    yield UserService(store, AuditLog(store))
    store.close()


def test_one_time_password_must_be_changed(users: UserService) -> None:
    user, one_time = users.create(SYSTEM, "alice", Role.ADMIN)
    assert user.must_change_password
    assert users.authenticate("alice", one_time).id == user.id
    changed = users.change_password(SYSTEM, user.id, one_time, PW)
    assert not changed.must_change_password
    assert changed.session_epoch == user.session_epoch + 1
    with pytest.raises(InvalidCredentials):
        users.authenticate("alice", one_time)
    assert users.authenticate("alice", PW).id == user.id


def test_authentication_failures_look_alike(users: UserService) -> None:
    users.create(SYSTEM, "bob", Role.VIEWER, PW)
    messages = set()
    for name, pw in (("bob", "wrong password!"), ("nobody", PW)):
        with pytest.raises(InvalidCredentials) as e:
            users.authenticate(name, pw)
        messages.add(str(e.value))
    assert len(messages) == 1


def test_weak_and_duplicate(users: UserService) -> None:
    with pytest.raises(WeakPasswordError):
        users.create(SYSTEM, "carol", Role.VIEWER, "short")
    users.create(SYSTEM, "carol", Role.VIEWER, PW)
    with pytest.raises(Conflict):
        users.create(SYSTEM, "carol", Role.ADMIN, PW)
    user = users.find("carol")
    assert user is not None
    with pytest.raises(InvalidCredentials):
        users.change_password(SYSTEM, user.id, "not the old one", PW + "x")


def test_disable_and_role_change_end_sessions(users: UserService) -> None:
    users.create(SYSTEM, "root", Role.ADMIN, PW)
    dave, _ = users.create(SYSTEM, "dave", Role.OPERATOR, PW)
    updated = users.update(SYSTEM, dave.id, role=Role.VIEWER)
    assert updated.role is Role.VIEWER and updated.session_epoch == dave.session_epoch + 1
    users.update(SYSTEM, dave.id, disabled=True)
    with pytest.raises(InvalidCredentials):
        users.authenticate("dave", PW)
    with pytest.raises(NotFound):
        users.update(SYSTEM, "u_missing", disabled=True)


def test_last_enabled_admin_is_protected(users: UserService) -> None:
    root, _ = users.create(SYSTEM, "root", Role.ADMIN, PW)
    with pytest.raises(Conflict):
        users.update(SYSTEM, root.id, role=Role.OPERATOR)
    with pytest.raises(Conflict):
        users.update(SYSTEM, root.id, disabled=True)
    other, _ = users.create(SYSTEM, "root2", Role.ADMIN, PW)
    users.update(SYSTEM, root.id, disabled=True)
    with pytest.raises(Conflict):
        users.update(SYSTEM, other.id, role=Role.VIEWER)


def test_every_change_is_audited_without_hashes(users: UserService) -> None:
    user, _ = users.create(SYSTEM, "erin", Role.VIEWER, PW)
    users.update(SYSTEM, user.id, role=Role.OPERATOR)
    entries, _ = users._audit.list(target_id=user.id)
    assert [e["action"] for e in entries] == ["user.update", "user.create"]
    assert entries[0]["before"]["role"] == "viewer" and entries[0]["after"]["role"] == "operator"
    raw = "".join(str(r) for r in users._store.db.execute("SELECT * FROM audit_log"))
    assert "scrypt$" not in raw


def test_list_filters_by_role(users: UserService) -> None:
    for name, role in (("a1", Role.ADMIN), ("o1", Role.OPERATOR), ("o2", Role.OPERATOR)):
        users.create(SYSTEM, name, role, PW)
    items, total = users.list(role=Role.OPERATOR)
    assert total == 2 and [u.username for u in items] == ["o1", "o2"]
