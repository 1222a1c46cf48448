"""Tables of the auth component: users, API tokens and broker service accounts."""

from __future__ import annotations

from sqlite_utils import Database

from edgefleet.fleet_server.storage import Component


def _migration_1(db: Database) -> None:
    db.execute(
        "CREATE TABLE users ("
        " id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, role TEXT NOT NULL,"
        " password_hash TEXT NOT NULL, must_change_password INTEGER NOT NULL DEFAULT 0,"
        " disabled INTEGER NOT NULL DEFAULT 0, session_epoch INTEGER NOT NULL DEFAULT 0,"
        " created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE api_tokens ("
        " id TEXT PRIMARY KEY, name TEXT NOT NULL, user_id TEXT REFERENCES users(id),"
        " role TEXT NOT NULL, scopes TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,"
        " created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, last_used_at TEXT)"
    )
    db.execute(
        "CREATE TABLE broker_accounts ("
        " username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at TEXT NOT NULL)"
    )


COMPONENT = Component("auth", [(1, _migration_1)])
