"""Training checkpoints in the registry: one model file per (model, run, round).

A federated job (``fljobs``) checkpoints every round here: the round's weights written
into the base version's graph, as an ONNX file in the same content-addressed
:class:`~edgefleet.fleet_server.registry.artifacts.ArtifactStore` as versions (identical
bytes are stored once). A checkpoint is **not a version**: it has no version string and
no stage, so nothing that releases or rolls out versions can name it; it is only ever
read back (resume, evaluation, download). Checkpoints are immutable: registering the same
(model, run, round) again is a no-op when the bytes are the same and a conflict otherwise.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from edgefleet.fleet_server.audit import Actor, AuditLog
from edgefleet.fleet_server.registry.artifacts import ArtifactStore
from edgefleet.fleet_server.registry.errors import (
    InvalidMetadataError,
    NotFoundError,
    RegistryError,
)
from edgefleet.fleet_server.registry.inspect import inspect_model
from edgefleet.fleet_server.registry.metadata import check_name
from edgefleet.fleet_server.registry.service import actor_ref
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
MAX_ROUND = 1_000_000


class CheckpointConflictError(RegistryError):
    """This (model, run, round) is checkpointed already, with other bytes."""

    status = 409
    code = "checkpoint_exists"


def _now() -> datetime:
    return datetime.now(UTC)


class CheckpointService:
    """Register, list and read training checkpoints (see module docstring)."""

    def __init__(self, store: Store, audit: AuditLog, artifacts: ArtifactStore, *,
                 clock: Callable[[], datetime] = _now) -> None:
        self._store = store
        self._audit = audit
        self.artifacts = artifacts
        self._clock = clock

    def add(self, model: str, run: str, round_: int, stream: BinaryIO, *,
            parent_version: str, actor: Actor, metrics: Mapping[str, Any] | None = None,
            lineage: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Store a round's model file; the checkpoint record (the existing one when the
        same bytes were registered before).

        Raises:
            InvalidMetadataError: bad run or round, unknown model or parent version.
            InvalidArtifactError: the bytes are not a loadable model.
            CheckpointConflictError: the round is checkpointed with other bytes.
        """
        check_name(model)
        if not RUN_RE.fullmatch(run):
            raise InvalidMetadataError(f"invalid run {run!r}")
        if not 0 <= round_ <= MAX_ROUND:
            raise InvalidMetadataError(f"round must be in [0, {MAX_ROUND}]")
        with self.artifacts.stage(stream) as staged:
            existing = self._find(model, run, round_)
            if existing is not None:
                return self._same_or_conflict(existing, staged.digest)
            info = inspect_model(staged.path)
            with self._store.transaction() as db:
                existing = self._find(model, run, round_)
                if existing is not None:
                    return self._same_or_conflict(existing, staged.digest)
                parent = list(db["registry_versions"].rows_where(
                    "model = ? AND version = ?", [model, parent_version]))
                if not parent:
                    raise InvalidMetadataError(
                        f"parent {model}@{parent_version} does not exist")
                row = {
                    "model": model, "run": run, "round": round_, "digest": staged.digest,
                    "size_bytes": staged.size_bytes, "framework": info.framework.value,
                    "parent_id": parent[0]["id"], "metrics": json.dumps(dict(metrics or {})),
                    "lineage": json.dumps(dict(lineage or {})),
                    "created_at": self._clock().isoformat(),
                    "created_by": actor_ref(actor),
                }
                db["registry_checkpoints"].insert(row)
                self.artifacts.commit(staged)
                record = self.get(model, run, round_)
                self._audit.record(actor, "model.checkpoint.add", "model_checkpoint",
                                   f"{model}@{run}#{round_}", None,
                                   {k: record[k] for k in ("model", "run", "round", "digest",
                                                           "size_bytes", "parent")})
        log.info("checkpoint %s %s round %d: %s (%d bytes)", model, run, round_,
                 staged.digest, staged.size_bytes)
        return record

    def get(self, model: str, run: str, round_: int) -> dict[str, Any]:
        """One checkpoint. Raises NotFoundError."""
        found = self._find(model, run, round_)
        if found is None:
            raise NotFoundError(f"model {model!r} has no checkpoint of {run!r} round {round_}")
        return found

    def latest(self, model: str, run: str) -> dict[str, Any] | None:
        """The checkpoint of the highest round of ``run``, None when it has none."""
        rows = list(self._store.db["registry_checkpoints"].rows_where(
            "model = ? AND run = ?", [model, run], order_by="round DESC", limit=1))
        return self._decode(rows[0]) if rows else None

    def list(self, model: str, *, run: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Checkpoints of a model (of one run when given), newest first.

        Raises:
            NotFoundError: no such model.
        """
        if not list(self._store.db["registry_models"].rows_where("name = ?", [model])):
            raise NotFoundError(f"no model named {model!r}")
        where, args = "model = ?", [model]
        if run is not None:
            where += " AND run = ?"
            args.append(run)
        table = self._store.db["registry_checkpoints"]
        total = table.count_where(where, args)
        rows = table.rows_where(where, args, order_by="id DESC", limit=limit, offset=offset)
        return [self._decode(r) for r in rows], total

    def path(self, record: Mapping[str, Any]) -> Path:
        """The stored model file of a checkpoint record. Raises NotFoundError."""
        path = self.artifacts.path_for(str(record["digest"]))
        if not path.is_file():
            raise NotFoundError(f"artifact {record['digest']} is missing from the store")
        return path

    # -- helpers -----------------------------------------------------------------

    def _find(self, model: str, run: str, round_: int) -> dict[str, Any] | None:
        rows = list(self._store.db["registry_checkpoints"].rows_where(
            "model = ? AND run = ? AND round = ?", [model, run, round_]))
        return self._decode(rows[0]) if rows else None

    @staticmethod
    def _same_or_conflict(existing: dict[str, Any], digest: str) -> dict[str, Any]:
        if existing["digest"] != digest:
            raise CheckpointConflictError(
                f"{existing['model']} {existing['run']} round {existing['round']} is "
                f"checkpointed already with other bytes ({existing['digest']})")
        return existing

    def _decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["metrics"] = json.loads(out["metrics"])
        out["lineage"] = json.loads(out["lineage"])
        parent = self._store.db["registry_versions"].get(out["parent_id"])
        out["parent"] = f"{parent['model']}@{parent['version']}"
        return out
