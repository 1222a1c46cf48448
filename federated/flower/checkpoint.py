"""Per-round checkpoints: global weights (.npz) plus round metrics (.json).

Flower cannot resume a run. The ServerApp therefore writes a checkpoint after every round
and a failed run is resumed by starting a *new* run with ``resume=true`` on the same
checkpoint directory: it reads the latest round's weights and continues numbering from
there. Layout::

    <dir>/round-0000.npz   initial weights (fresh runs only)
    <dir>/round-0003.npz   weights after round 3, keyed by ONNX initializer name
    <dir>/round-0003.json  RoundRecord of round 3 (metrics, nodes, bytes, duration)
    <dir>/latest.json      {"round": 3, ...}: written last, so it never points at a
                           half-written round

Every file is written to a temporary name, fsynced and renamed.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.federated.flower.errors import CheckpointError

LATEST_FILE = "latest.json"
_ROUND_RE = re.compile(r"^round-(\d{4,})\.json$")


@dataclass(frozen=True)
class FailedNode:
    """A node that was asked to work in a phase and did not deliver a usable reply."""

    node_id: int
    phase: str  # "train" or "evaluate"
    reason: str
    code: int | None = None  # Flower ErrorCode, None when the node never replied


@dataclass(frozen=True)
class RoundRecord:
    """What one round did; serialised as ``round-NNNN.json``."""

    round: int
    run_id: int
    status: str  # "initial", "aggregated" or "skipped" (too few replies: weights kept)
    strategy: str
    participating_nodes: list[int]
    failed_nodes: list[FailedNode]
    examples: int  # training examples behind the aggregate
    bytes_sent: int  # array payload pushed to nodes (train + evaluate)
    bytes_received: int  # array payload received from nodes
    duration_s: float
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_nodes: list[int] = field(default_factory=list)
    skipped_nodes: list[int] = field(default_factory=list)  # timed out recently: not asked
    loss: float | None = None  # federated evaluation loss of the new global model
    accuracy: float | None = None  # its accuracy on the nodes' held-out shares
    dp: dict[str, Any] | None = None  # central-DP parameters when enabled
    settings: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0  # unix time
    resumed_from: int | None = None  # round this run started from, when resumed

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_json`."""
        values = dict(data)
        values["failed_nodes"] = [FailedNode(**f) for f in values.get("failed_nodes", [])]
        return cls(**values)


@dataclass(frozen=True)
class Checkpoint:
    """One round's saved state."""

    round: int
    weights: dict[str, np.ndarray]
    record: RoundRecord


def weights_path(directory: Path, server_round: int) -> Path:
    """Path of the weights file of ``server_round``."""
    return directory / f"round-{server_round:04d}.npz"


def record_path(directory: Path, server_round: int) -> Path:
    """Path of the metrics file of ``server_round``."""
    return directory / f"round-{server_round:04d}.json"


def save_round(directory: Path, weights: Mapping[str, np.ndarray], record: RoundRecord) -> None:
    """Write weights, then the record, then move ``latest.json`` forward.

    Raises:
        CheckpointError: the directory cannot be written.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(weights_path(directory, record.round), _npz_bytes(weights))
        _atomic_write(
            record_path(directory, record.round),
            json.dumps(record.to_json(), indent=2, sort_keys=True).encode(),
        )
        latest = {
            "round": record.round,
            "run_id": record.run_id,
            "weights": weights_path(directory, record.round).name,
            "record": record_path(directory, record.round).name,
        }
        _atomic_write(directory / LATEST_FILE, json.dumps(latest, indent=2).encode())
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint to {directory}: {e}") from e


def latest_round(directory: Path) -> int | None:
    """Round number ``latest.json`` points at, or None when there is no checkpoint."""
    path = directory / LATEST_FILE
    if not path.exists():
        return None
    try:
        return int(json.loads(path.read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"unreadable {path}: {e}") from e


def load_round(directory: Path, server_round: int | None = None) -> Checkpoint:
    """Load ``server_round`` (default: the latest) from ``directory``.

    Raises:
        CheckpointError: no such checkpoint or unreadable files.
    """
    if server_round is None:
        server_round = latest_round(directory)
        if server_round is None:
            raise CheckpointError(f"no checkpoint in {directory}")
    try:
        weights = load_weights(weights_path(directory, server_round))
        text = record_path(directory, server_round).read_text()
        record = RoundRecord.from_json(json.loads(text))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"unreadable checkpoint round {server_round} in {directory}: {e}"
        ) from e
    return Checkpoint(round=server_round, weights=weights, record=record)


def list_records(directory: Path) -> list[RoundRecord]:
    """Every round record in ``directory``, ordered by round."""
    records = []
    for path in sorted(directory.glob("round-*.json")):
        if _ROUND_RE.match(path.name):
            try:
                records.append(RoundRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as e:
                raise CheckpointError(f"unreadable {path}: {e}") from e
    return sorted(records, key=lambda r: r.round)


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Read a weights ``.npz`` (keys are ONNX initializer names).

    Raises:
        CheckpointError: missing or malformed file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from e


def _npz_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in weights.items()}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
