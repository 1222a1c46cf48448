"""The update state machine's data: states, events, the one transition table, the record.

This module does no I/O except ``StateStore`` and ``atomic_write_bytes`` at the bottom,
which persist a record the crash-safe way (write a temp file, fsync it, rename it over
the old one, fsync the directory). ``next_state`` is the only place that decides a
transition; ``UpdateMachine`` in ``machine`` is the only code that calls it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORD_FORMAT = 1


class UpdateError(Exception):
    """Base class of every error raised by ``edgefleet.agent.update``'s machine modules."""


class IllegalTransition(UpdateError):
    """An event that the transition table does not allow in the current state."""

    def __init__(self, state: UpdateState, event: UpdateEvent) -> None:
        self.state = state
        self.event = event
        super().__init__(f"event {event.value!r} is not allowed in state {state.value!r}")


class StateFileError(UpdateError):
    """The persisted state file exists but cannot be read or parsed."""


class UpdateState(StrEnum):
    """Where an update is. Persisted; the agent resumes from it after a restart."""

    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    WARMING = "warming"
    SWITCHING = "switching"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"


class UpdateEvent(StrEnum):
    """What happened; together with the state it picks the next state."""

    CHECK = "check"
    NO_UPDATE = "no_update"
    ASSIGNED = "assigned"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    STAGED = "staged"
    WARMED = "warmed"
    SWITCHED = "switched"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


S, E = UpdateState, UpdateEvent

TRANSITIONS: Mapping[tuple[UpdateState, UpdateEvent], UpdateState] = {
    (S.IDLE, E.CHECK): S.CHECKING,
    (S.COMMITTED, E.CHECK): S.CHECKING,
    (S.CHECKING, E.NO_UPDATE): S.IDLE,
    (S.CHECKING, E.ASSIGNED): S.DOWNLOADING,
    # Nothing was touched yet: a failed check (server unreachable) just goes back to rest.
    (S.CHECKING, E.FAILED): S.IDLE,
    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFYING,
    (S.DOWNLOADING, E.FAILED): S.ROLLING_BACK,
    (S.VERIFYING, E.VERIFIED): S.STAGING,
    (S.VERIFYING, E.FAILED): S.ROLLING_BACK,
    (S.STAGING, E.STAGED): S.WARMING,
    (S.STAGING, E.FAILED): S.ROLLING_BACK,
    (S.WARMING, E.WARMED): S.SWITCHING,
    (S.WARMING, E.FAILED): S.ROLLING_BACK,
    (S.SWITCHING, E.SWITCHED): S.COMMITTED,
    (S.SWITCHING, E.FAILED): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.ROLLED_BACK): S.IDLE,
}
"""The whole state machine. Any (state, event) pair not listed is refused."""

RESTING_STATES = frozenset({S.IDLE, S.COMMITTED})
"""States in which no update is in progress (nothing to resume)."""

del S, E


def next_state(state: UpdateState, event: UpdateEvent) -> UpdateState:
    """The state that ``event`` leads to from ``state``.

    Raises:
        IllegalTransition: the table has no such transition.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


@dataclass(frozen=True)
class Assignment:
    """One bundle the director assigned to this device, as the verifier reports it.

    Attributes:
        name: the TUF target path of the bundle (e.g. ``"ecg/1.2.0.tar"``).
        length: its signed length in bytes.
        hashes: algorithm -> hex digest, as signed (at least ``sha256``).
        custom: any extra signed fields (passed through, persisted, reported).
    """

    name: str
    length: int
    hashes: Mapping[str, str]
    custom: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identifies the bundle's content: name plus sha256 (or the first hash)."""
        algo = "sha256" if "sha256" in self.hashes else min(self.hashes, default="")
        return f"{self.name}@{algo}:{self.hashes.get(algo, '')}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "length": self.length,
            "hashes": dict(self.hashes),
            "custom": dict(self.custom),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Assignment:
        return cls(
            name=str(data["name"]),
            length=int(data["length"]),
            hashes={str(k): str(v) for k, v in dict(data["hashes"]).items()},
            custom=dict(data.get("custom") or {}),
        )


@dataclass(frozen=True)
class UpdateRecord:
    """Everything the machine needs to resume: the state and the update in progress.

    Attributes:
        state: the current state.
        seq: incremented on every transition (orders the events the server receives).
        assignment: the bundle being installed (None when resting without one).
        bundle_path: the downloaded bundle file, once downloaded.
        target_slot: the slot being installed into (the inactive one when the update began).
        previous_slot: the slot that was active when the update began (None on a fresh device).
        failed_in: the state a failure happened in, while rolling back (and after, for status).
        error: the last failure's message.
        rejected: ``Assignment.key`` of bundles that failed past downloading; not retried.
    """

    state: UpdateState = UpdateState.IDLE
    seq: int = 0
    assignment: Assignment | None = None
    bundle_path: str | None = None
    target_slot: str | None = None
    previous_slot: str | None = None
    failed_in: UpdateState | None = None
    error: str | None = None
    rejected: tuple[str, ...] = ()

    def evolve(self, **changes: Any) -> UpdateRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "state": self.state.value,
            "seq": self.seq,
            "assignment": None if self.assignment is None else self.assignment.to_dict(),
            "bundle_path": self.bundle_path,
            "target_slot": self.target_slot,
            "previous_slot": self.previous_slot,
            "failed_in": None if self.failed_in is None else self.failed_in.value,
            "error": self.error,
            "rejected": list(self.rejected),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpdateRecord:
        """Raises: StateFileError on an unknown format or malformed fields."""
        if data.get("format") != RECORD_FORMAT:
            raise StateFileError(f"unknown state file format {data.get('format')!r}")
        try:
            assignment = data.get("assignment")
            failed_in = data.get("failed_in")
            return cls(
                state=UpdateState(data["state"]),
                seq=int(data["seq"]),
                assignment=None if assignment is None else Assignment.from_dict(assignment),
                bundle_path=data.get("bundle_path"),
                target_slot=data.get("target_slot"),
                previous_slot=data.get("previous_slot"),
                failed_in=None if failed_in is None else UpdateState(failed_in),
                error=data.get("error"),
                rejected=tuple(str(r) for r in data.get("rejected") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateFileError(f"malformed state file: {exc}") from exc


# -- persistence (the only I/O in this module) -----------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    Writes a temp file in the same directory (with ``mode`` set before any byte is
    written, e.g. 0o600 for private keys), fsyncs it, renames it over ``path`` and fsyncs
    the directory. The one atomic-write of the project: agent and server use it alike.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    """``atomic_write_bytes`` of ``data`` as sorted, indented JSON."""
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")


class StateStore:
    """Keeps the ``UpdateRecord`` in one JSON file, replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> UpdateRecord:
        """The persisted record, or a fresh IDLE record when none was saved yet.

        Raises:
            StateFileError: the file exists but is not a valid record.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return UpdateRecord()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StateFileError(f"{self.path}: not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise StateFileError(f"{self.path}: not a JSON object")
        return UpdateRecord.from_dict(data)

    def save(self, record: UpdateRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, record.to_dict())
        log.debug("persisted update state %s (seq %d)", record.state.value, record.seq)
