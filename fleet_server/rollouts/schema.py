"""Tables of the rollouts component, as versioned migrations.

* ``rollouts``: one row per rollout: what moves where (model, version, bundle target,
  from-version), its ``spec`` (JSON: target selector, wave fractions, bake and extension
  times, failure policy, gate thresholds, shadow rate), the cumulative wave sizes
  (``waves`` JSON), the current ``wave``, when it was assigned (``wave_started_at``: what
  counts as its evidence) and when its bake clock started (``bake_started_at``: a resume
  restarts the clock, never the evidence), ``status``, and the last gate evaluation
  (``last_gates`` JSON) for the console.
* ``rollout_devices``: every device of a rollout in its fixed random ``position`` (waves
  take consecutive positions); ``wave`` is set when the device is assigned; ``assign``
  is the progress of the director assignment (``pending`` → ``assigning`` →
  ``assigned``; on roll back ``reverting`` → ``reverted``) so a server killed between
  signing and recording finishes the job on restart without repeating or losing a wave;
  ``previous_target`` is what the director assigned before (what a roll back returns to).
* ``rollout_decisions``: the append-only decision log (policy decisions with their gate
  values, and operator actions).
* ``experiments`` / ``experiment_devices``: A/B tests: two versions on two randomized
  arms of devices, the metric compared and its settings; each device's arm and the
  progress of its director assignment (``assigning`` → ``assigned``).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

_V1 = [
    """CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    from_version TEXT,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    waves TEXT NOT NULL,
    wave INTEGER NOT NULL,
    wave_started_at REAL NOT NULL,       -- when the current wave was assigned
    bake_started_at REAL NOT NULL,       -- when its bake clock started (resume restarts it)
    started_at REAL NOT NULL,
    promoted INTEGER NOT NULL DEFAULT 0,
    seed TEXT NOT NULL,
    last_gates TEXT,
    last_action TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT
)""",
    "CREATE INDEX rollouts_status ON rollouts(status)",
    """CREATE TABLE rollout_devices (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    device_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    wave INTEGER,
    assign TEXT NOT NULL DEFAULT 'pending',
    previous_target TEXT,
    assigned_at REAL,
    PRIMARY KEY (rollout_id, device_id)
)""",
    "CREATE INDEX rollout_devices_device ON rollout_devices(device_id)",
    "CREATE INDEX rollout_devices_position ON rollout_devices(rollout_id, position)",
    """CREATE TABLE rollout_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    ts REAL NOT NULL,
    wave INTEGER NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    gates TEXT,
    actor TEXT NOT NULL
)""",
    "CREATE INDEX rollout_decisions_rollout ON rollout_decisions(rollout_id, id)",
    """CREATE TABLE experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    version_a TEXT NOT NULL,
    version_b TEXT NOT NULL,
    target_a TEXT NOT NULL,
    target_b TEXT NOT NULL,
    metric TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    seed TEXT NOT NULL,
    started_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    stopped_at TEXT
)""",
    """CREATE TABLE experiment_devices (
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    device_id TEXT NOT NULL,
    arm TEXT NOT NULL,
    assign TEXT NOT NULL,
    previous_target TEXT,
    PRIMARY KEY (experiment_id, device_id)
)""",
    "CREATE INDEX experiment_devices_device ON experiment_devices(device_id)",
]


def _v1(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration transaction.
    for statement in _V1:
        db.execute(statement)


def _v2(db: Database) -> None:
    # The carrier and every tick look for rows with work left (a handful among millions
    # of finished rows): an index on the state finds them without a scan.
    db.execute("CREATE INDEX rollout_devices_assign ON rollout_devices(assign, rollout_id)")


MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [(1, _v1), (2, _v2)]
