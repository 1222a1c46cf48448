"""The device's store of predictions and their true labels (SQLite, WAL).

Every successful prediction is written (in batches, by the flusher thread) with its inputs
and outputs in a compact binary form (:func:`encode_arrays`), so that labelled examples
can later feed federated training. The store is bounded: beyond ``max_rows`` the oldest
predictions are deleted. ``feedback(id, label)`` attaches the true label and records
whether the model was right (predicted label: the argmax of the model's probability
output, else an integer output, else the argmax of the first float output);
:meth:`FeedbackStore.accuracy` aggregates that per model version.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.daemon.errors import StoreError, UnknownPredictionError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    ts REAL NOT NULL,
    inputs BLOB NOT NULL,
    outputs BLOB NOT NULL,
    label TEXT,
    correct INTEGER,
    labelled_ts REAL
);
"""
_HEADER = struct.Struct("<I")

Label = int | float | str | bool | list[Any]


def encode_arrays(arrays: dict[str, Any]) -> bytes:
    """``{name: array}`` → bytes: a length-prefixed JSON header, then the raw buffers."""
    items = [(name, np.ascontiguousarray(value)) for name, value in arrays.items()]
    prefix = _prefix(tuple((n, a.dtype.str, a.shape) for n, a in items))
    return b"".join([prefix, *(a.tobytes() for _, a in items)])


@functools.lru_cache(maxsize=256)
def _prefix(layout: tuple[tuple[str, str, tuple[int, ...]], ...]) -> bytes:
    """Length-prefixed JSON header; cached, since a model's layouts rarely vary."""
    header = json.dumps([[n, dtype, list(shape)] for n, dtype, shape in layout]).encode()
    return _HEADER.pack(len(header)) + header


def decode_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays`."""
    (size,) = _HEADER.unpack_from(blob)
    offset = _HEADER.size + size
    out = {}
    for name, dtype, shape in json.loads(blob[_HEADER.size:offset]):
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(blob, dt, count, offset).reshape(shape)
        offset += count * dt.itemsize
    return out


def predicted_labels(outputs: Mapping[str, np.ndarray],
                     confidence_output: str | None = None) -> list[int] | None:
    """Per row, the predicted class; None when the outputs are not a classifier's.

    The argmax of ``confidence_output`` (the model's probability output, as the daemon
    found it) when given and present; else the value of the first integer output (a
    classifier that outputs labels); else the argmax of the first float output of rank
    >= 2 with more than one column.
    """
    probs = None if confidence_output is None else outputs.get(confidence_output)
    if probs is not None and probs.dtype.kind == "f" and probs.ndim >= 2 \
            and probs.shape[-1] > 1:
        return [int(v) for v in probs.reshape(probs.shape[0], -1).argmax(axis=1)]
    for a in outputs.values():
        if a.dtype.kind in "iu" and a.ndim >= 1:
            return [int(v) for v in a.reshape(a.shape[0], -1)[:, 0]]
    for a in outputs.values():
        if a.dtype.kind == "f" and a.ndim >= 2 and a.shape[-1] > 1:
            return [int(v) for v in a.reshape(a.shape[0], -1).argmax(axis=1)]
    return None


@dataclass(frozen=True)
class StoredPrediction:
    id: str
    model: str
    version: str
    ts: float
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    label: Label | None
    correct: bool | None


@dataclass(frozen=True)
class FeedbackOutcome:
    """What a label said about its prediction.

    Attributes:
        model, version: who made the prediction.
        correct: whether it was right; None when that cannot be decided.
        previous: the verdict of an earlier label of the same prediction (None: first
            label, or undecidable).
    """

    model: str
    version: str
    correct: bool | None
    previous: bool | None


@dataclass(frozen=True)
class Accuracy:
    model: str
    version: str
    labelled: int
    correct: int  # among the labelled ones whose correctness could be decided

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


class FeedbackStore:
    """Thread-safe; one connection guarded by a lock (writes are batched anyway).

    Raises:
        StoreError: the database cannot be opened.
    """

    def __init__(self, path: Path, max_rows: int = 100_000,
                 confidence_outputs: Mapping[str, str | None] | None = None) -> None:
        self.path = path
        self.max_rows = max_rows
        # per model: its probability output, which decides the predicted class
        self.confidence_outputs = dict(confidence_outputs or {})
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the feedback store {path}: {e}") from e

    def add_many(self, rows: Iterable[tuple[str, str, str, float, dict[str, Any],
                                            dict[str, np.ndarray]]]) -> None:
        """Store predictions ``(id, model, version, ts, inputs, outputs)``; evict the oldest.

        Raises:
            StoreError: the write failed.
        """
        data = [(pid, model, version, ts, encode_arrays(inputs), encode_arrays(outputs))
                for pid, model, version, ts, inputs, outputs in rows]
        if not data:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR IGNORE INTO predictions (id, model, version, ts, inputs, outputs)"
                    " VALUES (?, ?, ?, ?, ?, ?)", data)
                self._db.execute(
                    "DELETE FROM predictions WHERE seq <= "
                    "(SELECT MAX(seq) FROM predictions) - ?", (self.max_rows,))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"cannot write the feedback store: {e}") from e

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def feedback(self, pid: str, label: Label) -> bool | None:
        """Attach the true ``label``; return whether the prediction was right (None: unknown).

        A batch prediction takes a list of labels, one per row.

        Raises:
            UnknownPredictionError: no stored prediction has this id.
            StoreError: the write failed.
        """
        return self.feedback_outcome(pid, label).correct

    def feedback_outcome(self, pid: str, label: Label) -> FeedbackOutcome:
        """Like :meth:`feedback`, also saying whose prediction it was and the verdict of
        an earlier label of it.

        Raises:
            UnknownPredictionError: no stored prediction has this id.
            StoreError: the write failed.
        """
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT model, version, outputs, correct FROM predictions WHERE id = ?",
                    (pid,)).fetchone()
                if row is None:
                    raise UnknownPredictionError(pid)
                model, version, blob, previous = row
                correct = _is_correct(decode_arrays(blob), label,
                                      self.confidence_outputs.get(model))
                self._db.execute(
                    "UPDATE predictions SET label = ?, correct = ?, labelled_ts = ? WHERE id = ?",
                    (json.dumps(label), None if correct is None else int(correct), time.time(),
                     pid))
            except sqlite3.Error as e:
                raise StoreError(f"cannot write the feedback store: {e}") from e
        return FeedbackOutcome(model, version, correct,
                               None if previous is None else bool(previous))

    def get(self, pid: str) -> StoredPrediction | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, model, version, ts, inputs, outputs, label, correct "
                "FROM predictions WHERE id = ?", (pid,)).fetchone()
        if row is None:
            return None
        return StoredPrediction(row[0], row[1], row[2], row[3], decode_arrays(row[4]),
                                decode_arrays(row[5]),
                                None if row[6] is None else json.loads(row[6]),
                                None if row[7] is None else bool(row[7]))

    def contains(self, pid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM predictions WHERE id = ?",
                                    (pid,)).fetchone() is not None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    def labelled(self, model: str, limit: int = 10_000) -> list[StoredPrediction]:
        """The most recent labelled predictions of ``model`` (training examples)."""
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM predictions WHERE model = ? AND label IS NOT NULL "
                "ORDER BY seq DESC LIMIT ?", (model, limit))]
        return [p for p in (self.get(i) for i in ids) if p is not None]

    def accuracy(self) -> list[Accuracy]:
        """Per (model, version): labelled predictions and how many were right."""
        with self._lock:
            rows = self._db.execute(
                "SELECT model, version, COUNT(correct), COALESCE(SUM(correct), 0) "
                "FROM predictions WHERE label IS NOT NULL GROUP BY model, version "
                "ORDER BY model, version").fetchall()
        return [Accuracy(m, v, int(n), int(c)) for m, v, n, c in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _is_correct(outputs: dict[str, np.ndarray], label: Label,
                confidence_output: str | None = None) -> bool | None:
    predicted = predicted_labels(outputs, confidence_output)
    if predicted is None:
        return None
    labels: Sequence[Any] = label if isinstance(label, list) else [label]
    if len(labels) != len(predicted):
        return None
    try:
        return all(int(p) == int(t) for p, t in zip(predicted, labels, strict=True))
    except (TypeError, ValueError):
        return None
