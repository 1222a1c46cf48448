"""User accounts: create, authenticate, change password, change role / disable.

Every change is audited in the same transaction. Password hashes never leave this module:
``User`` carries no hash.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from edgefleet.fleet_server.audit import Actor, AuditLog
from edgefleet.fleet_server.auth.errors import Conflict, InvalidCredentials, NotFound
from edgefleet.fleet_server.auth.passwords import (
    check_password_strength,
    generate_password,
    hash_password,
    verify_password,
)
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.storage import Store, utcnow

# Verifying against a dummy hash for unknown users keeps login time independent of
# whether the username exists.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class User:
    """A console / API user (no secrets)."""

    id: str
    username: str
    role: Role
    must_change_password: bool
    disabled: bool
    session_epoch: int
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        """The public representation used by the API and the audit log."""
        return {
            "id": self.id, "username": self.username, "role": self.role.value,
            "must_change_password": self.must_change_password, "disabled": self.disabled,
            "created_at": self.created_at, "updated_at": self.updated_at,
        }


def _user(row: dict[str, Any]) -> User:
    return User(
        id=row["id"], username=row["username"], role=Role(row["role"]),
        must_change_password=bool(row["must_change_password"]),
        disabled=bool(row["disabled"]), session_epoch=int(row["session_epoch"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


class UserService:
    """Users in ``store``, audited in ``audit``."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit

    def _row(self, user_id: str) -> dict[str, Any]:
        rows = list(self._store.db.table("users").rows_where("id = ?", [user_id]))
        if not rows:
            raise NotFound(f"user {user_id} not found")
        return rows[0]

    def get(self, user_id: str) -> User:
        """Raises NotFound."""
        return _user(self._row(user_id))

    def find(self, username: str) -> User | None:
        """The user called ``username``, if any."""
        rows = list(self._store.db.table("users").rows_where("username = ?", [username]))
        return _user(rows[0]) if rows else None

    def list(self, *, role: Role | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[User], int]:
        """Users, optionally of one role, ordered by username, and the total."""
        rows, total = self._store.select_page(
            "users", where={"role": role.value if role else None},
            order_by="username", limit=limit, offset=offset,
        )
        return [_user(r) for r in rows], total

    def count(self) -> int:
        """How many users exist."""
        return int(self._store.db.table("users").count)

    def create(self, actor: Actor, username: str, role: Role,
               password: str | None = None) -> tuple[User, str]:
        """Create a user; returns it and its password (generated one-time when None).

        A generated password must be changed at first login.

        Raises:
            Conflict: the username is taken.
            WeakPasswordError: the given password is too short or too long.
        """
        must_change = password is None
        if password is None:
            password = generate_password()
        else:
            check_password_strength(password)
        now = utcnow()
        row = {
            "id": "u_" + secrets.token_hex(8), "username": username, "role": role.value,
            "password_hash": hash_password(password), "must_change_password": int(must_change),
            "disabled": 0, "session_epoch": 0, "created_at": now, "updated_at": now,
        }
        with self._store.transaction() as db:
            if self.find(username) is not None:
                raise Conflict(f"username {username!r} is taken")
            db.table("users").insert(row)
            user = _user(row)
            self._audit.record(actor, "user.create", "user", user.id, None, user.to_json())
        return user, password

    def authenticate(self, username: str, password: str) -> User:
        """The enabled user with these credentials.

        Raises:
            InvalidCredentials: unknown user, wrong password or disabled account.
        """
        rows = list(self._store.db.table("users").rows_where("username = ?", [username]))
        encoded = rows[0]["password_hash"] if rows else _DUMMY_HASH
        ok = verify_password(password, encoded)
        if not rows or not ok or rows[0]["disabled"]:
            raise InvalidCredentials("invalid username or password")
        return _user(rows[0])

    def change_password(self, actor: Actor, user_id: str, old: str, new: str) -> User:
        """Change a user's own password (needs the old one); ends their other sessions.

        Raises:
            InvalidCredentials: ``old`` is wrong.
            WeakPasswordError: ``new`` is too short or too long.
        """
        check_password_strength(new)
        with self._store.transaction() as db:
            row = self._row(user_id)
            if not verify_password(old, row["password_hash"]):
                raise InvalidCredentials("current password is wrong")
            before = _user(row)
            db.table("users").update(user_id, {
                "password_hash": hash_password(new), "must_change_password": 0,
                "session_epoch": before.session_epoch + 1, "updated_at": utcnow(),
            })
            after = self.get(user_id)
            self._audit.record(actor, "user.change_password", "user", user_id,
                               before.to_json(), after.to_json())
        return after

    def update(self, actor: Actor, user_id: str, *, role: Role | None = None,
               disabled: bool | None = None) -> User:
        """Change a user's role and/or disable flag (admin action); ends their sessions.

        Raises:
            NotFound: no such user.
            Conflict: the change would leave no enabled admin.
        """
        with self._store.transaction() as db:
            before = self.get(user_id)
            new_role = role if role is not None else before.role
            new_disabled = disabled if disabled is not None else before.disabled
            if before.role is Role.ADMIN and (new_role is not Role.ADMIN or new_disabled):
                admins = db.table("users").count_where(
                    "role = ? AND disabled = 0 AND id != ?", [Role.ADMIN.value, user_id])
                if admins == 0:
                    raise Conflict("cannot remove the last enabled admin")
            db.table("users").update(user_id, {
                "role": new_role.value, "disabled": int(new_disabled),
                "session_epoch": before.session_epoch + 1, "updated_at": utcnow(),
            })
            after = self.get(user_id)
            self._audit.record(actor, "user.update", "user", user_id,
                               before.to_json(), after.to_json())
        return after

    def end_sessions(self, actor: Actor, user_id: str) -> None:
        """Invalidate every console session of the user (logout)."""
        with self._store.transaction() as db:
            before = self.get(user_id)
            db.table("users").update(user_id, {"session_epoch": before.session_epoch + 1})
            self._audit.record(actor, "user.logout", "user", user_id, None, None)
