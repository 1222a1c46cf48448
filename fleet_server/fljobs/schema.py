"""Tables of the federated-jobs component, as versioned migrations.

* ``fl_jobs``: one row per federated training job: model and base version, the ``spec``
  (JSON: cohort selector, rounds, strategy, DP, hold-out set, margin, schedule), the
  resolved ``cohort`` (JSON device ids), ``status`` and ``phase``, the Flower run ids of
  every attempt (``run_ids`` JSON), ``attempts``, the ``result`` (JSON: accuracies,
  decision, lineage), the registered ``result_version`` (NULL when rejected or failed),
  ``error``; ``trigger`` says what started it (``api``, ``schedule``, ``drift:<alert
  id>``); for interval schedules ``next_run_at`` (unix seconds), for drift triggers
  ``drift_watermark`` (the newest fleet-drift alert id of the model when the job ended),
  and ``next_job_id`` (the job either started next).
* ``fl_rounds``: per job and round, the metrics of the round's checkpoint JSON
  (``record`` holds the whole JSON; the main numbers have their own columns).
* ``fl_nodes``: devices whose Flower SuperNode key is registered on the SuperLink, with
  the node id the SuperLink gave the key.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

_V1 = [
    """CREATE TABLE fl_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    base_version TEXT NOT NULL,
    spec TEXT NOT NULL,
    cohort TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT '',
    run_ids TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    result_version TEXT,
    error TEXT,
    scheduled_from INTEGER REFERENCES fl_jobs(id),
    trigger TEXT NOT NULL DEFAULT 'api',
    next_run_at REAL,
    drift_watermark INTEGER,
    next_job_id INTEGER REFERENCES fl_jobs(id),
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    updated_at TEXT NOT NULL
)""",
    "CREATE INDEX fl_jobs_status ON fl_jobs(status)",
    "CREATE INDEX fl_jobs_model ON fl_jobs(model)",
    """CREATE TABLE fl_rounds (
    job_id INTEGER NOT NULL REFERENCES fl_jobs(id),
    round INTEGER NOT NULL,
    run_id TEXT NOT NULL,                -- Flower run ids are uint64 (as node ids)
    status TEXT NOT NULL,
    loss REAL,
    accuracy REAL,
    examples INTEGER NOT NULL,
    participating_nodes TEXT NOT NULL,
    failed_nodes TEXT NOT NULL,
    bytes_sent INTEGER NOT NULL,
    bytes_received INTEGER NOT NULL,
    duration_s REAL NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
)""",
    """CREATE TABLE fl_nodes (
    device_id TEXT PRIMARY KEY REFERENCES devices(id),
    node_id TEXT NOT NULL UNIQUE,        -- Flower node ids are uint64: beyond SQLite INTEGER
    public_key_pem TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    registered_by TEXT NOT NULL
)""",
]


def _v1(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration transaction.
    for statement in _V1:
        db.execute(statement)


MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [(1, _v1)]
