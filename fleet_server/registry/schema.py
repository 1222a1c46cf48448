"""Tables of the model registry, as versioned migrations of the ``registry`` component."""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

_V1 = [
    """
CREATE TABLE registry_models (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
)""",
    """CREATE TABLE registry_versions (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL REFERENCES registry_models(name),
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    framework TEXT NOT NULL,
    quantization TEXT NOT NULL,
    signature TEXT NOT NULL,           -- JSON {"inputs": [...], "outputs": [...]}
    metrics TEXT NOT NULL,             -- JSON object
    reference_profile TEXT NOT NULL,   -- JSON (opaque for now)
    lineage TEXT NOT NULL,             -- JSON {data_digest, training_run, ...}
    parent_id INTEGER REFERENCES registry_versions(id),
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,          -- "<actor kind>:<actor id>"
    created_by_name TEXT NOT NULL,
    created_by_user TEXT,              -- the human behind the uploading actor, if any
    stage TEXT NOT NULL,
    stage_changed_at TEXT NOT NULL,
    approved_by TEXT,
    approved_by_name TEXT,
    approved_at TEXT,
    approval_reason TEXT,
    UNIQUE (model, version)
)""",
    "CREATE INDEX registry_versions_digest ON registry_versions(digest)",
    "CREATE INDEX registry_versions_stage ON registry_versions(model, stage)",
    # A version is immutable: only its stage and approval may change.
    """CREATE TRIGGER registry_versions_immutable
BEFORE UPDATE OF model, version, digest, size_bytes, framework, quantization, signature,
    metrics, reference_profile, lineage, parent_id, created_at, created_by, created_by_user
ON registry_versions
BEGIN
    SELECT RAISE(ABORT, 'model versions are immutable');
END""",
    """CREATE TRIGGER registry_versions_no_delete
BEFORE DELETE ON registry_versions
BEGIN
    SELECT RAISE(ABORT, 'model versions are never deleted; archive them');
END""",
]


def _v1(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration transaction.
    for statement in _V1:
        db.execute(statement)


#: Training checkpoints (federated rounds): content-addressed model files like versions,
#: but no stage and no version string, so nothing can release or roll them out.
_V2 = [
    """CREATE TABLE registry_checkpoints (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL REFERENCES registry_models(name),
    run TEXT NOT NULL,                 -- the training run, e.g. "fljob:7"
    round INTEGER NOT NULL,
    digest TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    framework TEXT NOT NULL,
    parent_id INTEGER NOT NULL REFERENCES registry_versions(id),  -- the base version
    metrics TEXT NOT NULL,             -- JSON object
    lineage TEXT NOT NULL,             -- JSON {training_run, federated_round, ...}
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (model, run, round)
)""",
    "CREATE INDEX registry_checkpoints_digest ON registry_checkpoints(digest)",
    """CREATE TRIGGER registry_checkpoints_immutable
BEFORE UPDATE ON registry_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are immutable');
END""",
]


def _v2(db: Database) -> None:
    for statement in _V2:
        db.execute(statement)


MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [(1, _v1), (2, _v2)]
