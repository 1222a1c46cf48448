"""Tables of the devices component, as versioned migrations."""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

_V1 = [
    """CREATE TABLE device_groups (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,     -- sha256 of the secret, shown once at creation
    group_name TEXT REFERENCES device_groups(name),
    note TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    used_by_device TEXT,
    revoked_at TEXT
)""",
    """CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    group_name TEXT REFERENCES device_groups(name),
    public_key_pem TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL UNIQUE,
    broker_password_hash TEXT,           -- NULL once decommissioned
    inventory TEXT NOT NULL DEFAULT '{}',
    enrolled_at TEXT NOT NULL,
    enrollment_token_id TEXT REFERENCES enrollment_tokens(id),
    inventory_updated_at TEXT,
    decommissioned_at TEXT,
    decommission_reason TEXT
)""",
    "CREATE INDEX devices_group ON devices(group_name)",
    "CREATE INDEX devices_status ON devices(status)",
    """CREATE TABLE device_tags (
    device_id TEXT NOT NULL REFERENCES devices(id),
    tag TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
)""",
    "CREATE INDEX device_tags_tag ON device_tags(tag)",
]


def _v1(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration transaction.
    for statement in _V1:
        db.execute(statement)


def _v2(db: Database) -> None:
    # The broker password also hashed in Mosquitto's own format ($7$ PBKDF2-SHA512), so
    # `edgefleet server mosquitto-config` can write a password file without plaintext.
    db.execute("ALTER TABLE devices ADD COLUMN broker_mosquitto_hash TEXT")


MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [(1, _v1), (2, _v2)]
