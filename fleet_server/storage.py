"""The one module that opens the SQLite database (sqlite-utils, WAL, foreign keys).

``Store`` hands every thread its own connection (waitress threads, the broker's event
loop and the scheduler all use the store), each wrapped in a ``sqlite_utils.Database``.
``store.transaction()`` opens ``BEGIN IMMEDIATE`` on the calling thread's connection; while
it is open, the ``with conn:`` blocks that sqlite-utils uses internally do not commit, so a
whole service call is atomic. Schemas evolve through versioned migrations per component,
recorded in ``schema_migrations``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from sqlite_utils import Database
from sqlite_utils.db import Table

Migration = Callable[[Database], None]


class StorageError(RuntimeError):
    """The database cannot be opened or migrated."""


@dataclass(frozen=True)
class Component:
    """A named set of tables with ordered, versioned migrations."""

    name: str
    migrations: Sequence[tuple[int, Migration]]


def utcnow() -> str:
    """Now as an ISO-8601 UTC string with seconds precision (the format stored everywhere)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class _Connection(sqlite3.Connection):
    """A connection whose ``with conn:`` is a no-op inside ``Store.transaction()``."""

    depth: int = 0

    def __enter__(self) -> _Connection:
        if self.depth:
            return self
        return super().__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if self.depth:
            return False
        return super().__exit__(exc_type, exc, tb)


class Store:
    """Thread-safe access to the server database at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating if needed) the database at ``path`` in WAL mode.

        Raises:
            StorageError: the file cannot be opened as a SQLite database.
        """
        store = cls(path)
        try:
            store.db.execute("PRAGMA journal_mode=WAL")
            store._ensure_migrations_table()
        except sqlite3.DatabaseError as e:
            store.close()
            raise StorageError(f"cannot open database {path}: {e}") from e
        return store

    def _connect(self) -> Database:
        if self._closed:
            raise StorageError("store is closed")
        conn = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None,
            check_same_thread=False, factory=_Connection,
        )
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self._connections.append(conn)
        return Database(conn)

    @property
    def db(self) -> Database:
        """The calling thread's ``sqlite_utils.Database``."""
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """Run the block atomically (``BEGIN IMMEDIATE``); nested calls join the outer one."""
        db = self.db
        conn = db.conn
        assert isinstance(conn, _Connection)
        if conn.depth:
            conn.depth += 1
            try:
                yield db
            finally:
                conn.depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        conn.depth = 1
        try:
            yield db
        except BaseException:
            conn.depth = 0
            conn.execute("ROLLBACK")
            raise
        conn.depth = 0
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            self._closed = True
            conns, self._connections = self._connections, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- migrations ---------------------------------------------------------------

    def _ensure_migrations_table(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, applied_at TEXT NOT NULL,"
            " PRIMARY KEY (component, version))"
        )

    def applied_versions(self, component: str) -> list[int]:
        """The migration versions already applied for ``component``, ascending."""
        rows = self.db.execute(
            "SELECT version FROM schema_migrations WHERE component = ? ORDER BY version",
            [component],
        ).fetchall()
        return [int(r[0]) for r in rows]

    def migrate(self, components: Sequence[Component]) -> list[tuple[str, int]]:
        """Apply each component's pending migrations in version order, one transaction each.

        Returns the (component, version) pairs applied now.

        Raises:
            StorageError: duplicate versions, or a migration failed (it is rolled back).
        """
        applied_now: list[tuple[str, int]] = []
        for component in components:
            versions = [v for v, _ in component.migrations]
            if len(set(versions)) != len(versions):
                raise StorageError(f"component {component.name}: duplicate migration versions")
            done = set(self.applied_versions(component.name))
            for version, fn in sorted(component.migrations, key=lambda m: m[0]):
                if version in done:
                    continue
                try:
                    with self.transaction() as db:
                        fn(db)
                        Table(db, "schema_migrations").insert(
                            {"component": component.name, "version": version,
                             "applied_at": utcnow()}
                        )
                except sqlite3.Error as e:
                    raise StorageError(
                        f"migration {component.name} v{version} failed: {e}"
                    ) from e
                applied_now.append((component.name, version))
        return applied_now

    # -- queries shared by the features --------------------------------------------

    def select_page(
        self,
        table: str,
        *,
        where: Mapping[str, Any] | None = None,
        order_by: str = "rowid",
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Rows of ``table`` whose columns equal ``where`` (None values ignored), and the total.

        ``order_by`` and column names come from code, never from requests.
        """
        clauses = []
        args: list[Any] = []
        for column, value in (where or {}).items():
            if value is None:
                continue
            clauses.append(f"[{column}] = ?")
            args.append(value)
        where_sql = " AND ".join(clauses) or None
        tbl = self.db.table(table)
        total = tbl.count_where(where_sql, args) if where_sql else tbl.count
        rows = list(
            tbl.rows_where(where_sql, args, order_by=order_by, limit=limit, offset=offset)
        )
        return rows, total
