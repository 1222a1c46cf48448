"""Append-only audit log: who changed what, when, with the state before and after.

SQLite triggers refuse UPDATE and DELETE on ``audit_log``, so not even server code can
rewrite history through SQL. Callers record inside their own ``store.transaction()`` so
the change and its audit row commit together. Values whose key looks secret (passwords,
token secrets and hashes) are replaced by ``"[redacted]"`` before they are stored.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from edgefleet.fleet_server.storage import Component, Store, utcnow

TABLE = "audit_log"
REDACTED = "[redacted]"
_SECRET_MARKERS = ("password", "secret", "hash", "session_key", "private_key")


class ActorKind(enum.StrEnum):
    """Who can cause a change."""

    USER = "user"
    TOKEN = "token"  # noqa: S105 - a label, not a secret
    DEVICE = "device"
    SYSTEM = "system"


@dataclass(frozen=True)
class Actor:
    """The authenticated party behind a request or job (``role`` is a Role value or "")."""

    kind: ActorKind
    id: str
    name: str
    role: str = ""

    @property
    def user_id(self) -> str | None:
        """The owning user's id for a user session (tokens carry theirs in ``id``)."""
        return self.id if self.kind is ActorKind.USER else None


SYSTEM = Actor(ActorKind.SYSTEM, "system", "system", "")


def _is_secret(key: Any, value: Any) -> bool:
    # Only text can be a secret: flags such as ``must_change_password`` stay readable.
    return (isinstance(value, str | bytes)
            and any(m in str(key).lower() for m in _SECRET_MARKERS))


def redact(value: Any) -> Any:
    """A copy of ``value`` with the text value of every secret-looking key redacted."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret(k, v) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _migration_1(db: Database) -> None:
    db.execute(
        f"CREATE TABLE {TABLE} ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL,"
        " actor_kind TEXT NOT NULL, actor_id TEXT NOT NULL, actor_name TEXT NOT NULL,"
        " actor_role TEXT NOT NULL, action TEXT NOT NULL, target_type TEXT NOT NULL,"
        " target_id TEXT NOT NULL, before TEXT, after TEXT)"
    )
    db.execute(f"CREATE INDEX idx_{TABLE}_target ON {TABLE}(target_type, target_id)")
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER {TABLE}_no_{op.lower()} BEFORE {op} ON {TABLE}"
            f" BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END"
        )


COMPONENT = Component("audit", [(1, _migration_1)])


def _row_to_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "ts": row["ts"],
        "actor": {"kind": row["actor_kind"], "id": row["actor_id"],
                  "name": row["actor_name"], "role": row["actor_role"]},
        "action": row["action"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "before": json.loads(row["before"]) if row["before"] is not None else None,
        "after": json.loads(row["after"]) if row["after"] is not None else None,
    }


class AuditLog:
    """Records and lists audit entries in ``store``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def record(  # noqa: PLR0917
        self,
        actor: Actor,
        action: str,
        target_type: str,
        target_id: str,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one entry (joins the caller's transaction); returns its id."""
        row = {
            "ts": utcnow(),
            "actor_kind": actor.kind.value,
            "actor_id": actor.id,
            "actor_name": actor.name,
            "actor_role": actor.role,
            "action": action,
            "target_type": target_type,
            "target_id": str(target_id),
            "before": None if before is None else json.dumps(redact(before), default=str),
            "after": None if after is None else json.dumps(redact(after), default=str),
        }
        with self._store.transaction() as db:
            table = db.table(TABLE)
            table.insert(row)
            return int(table.last_rowid or 0)

    def list(
        self,
        *,
        actor_id: str | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Entries matching every given filter, newest first, and the total count.

        ``since``/``until`` are ISO-8601 UTC strings compared to ``ts`` (inclusive).
        """
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("actor_id", actor_id), ("action", action),
                              ("target_type", target_type), ("target_id", target_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            clauses.append("ts >= ?")
            args.append(since)
        if until is not None:
            clauses.append("ts <= ?")
            args.append(until)
        where = " AND ".join(clauses) or None
        table = self._store.db.table(TABLE)
        total = table.count_where(where, args) if where else table.count
        rows = table.rows_where(where, args, order_by="id DESC", limit=limit, offset=offset)
        return [_row_to_entry(r) for r in rows], total
