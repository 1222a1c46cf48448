"""RegistryService: models, immutable versions, stages, approval, compare, lineage.

The only I/O here is the injected Store (SQL), ArtifactStore (files) and clock; the
decisions live in the pure modules (stages, compare, lineage, metadata).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from edgefleet.fleet_server.audit import Actor, AuditLog
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.registry.artifacts import ArtifactStore
from edgefleet.fleet_server.registry.compare import compare_versions
from edgefleet.fleet_server.registry.errors import (
    ApprovalForbiddenError,
    InvalidMetadataError,
    InvalidTransitionError,
    NotFoundError,
    VersionExistsError,
)
from edgefleet.fleet_server.registry.inspect import inspect_model
from edgefleet.fleet_server.registry.lineage import lineage_graph
from edgefleet.fleet_server.registry.metadata import UploadMetadata, check_name, check_version
from edgefleet.fleet_server.registry.stages import APPROVABLE, Stage, check_transition
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

_JSON_COLUMNS = ("signature", "metrics", "reference_profile", "lineage")
#: Columns an audit entry shows for a version (the full record minus bulky JSON).
_AUDIT_KEYS = (
    "model", "version", "digest", "size_bytes", "framework", "quantization", "stage",
    "approved_by", "approved_at", "approval_reason", "parent",
)


def _now() -> datetime:
    return datetime.now(UTC)


def actor_ref(actor: Actor) -> str:
    """How an actor is identified in registry records: ``"<kind>:<id>"``."""
    kind = getattr(actor.kind, "value", actor.kind)
    return f"{kind}:{actor.id}"


class RegistryService:
    """Business operations of the model registry. Every change is audited."""

    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        artifacts: ArtifactStore,
        *,
        max_artifact_bytes: int | None = None,
        approval_requires_second_person: bool = True,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._store = store
        self._second_person = approval_requires_second_person
        self._audit = audit
        self.artifacts = artifacts
        self._max_bytes = max_artifact_bytes
        self._clock = clock

    # -- reads -----------------------------------------------------------------

    def list_models(self, *, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Models with their version count and latest production version."""
        db = self._store.db
        total = db["registry_models"].count
        rows = list(
            db.query(
                """SELECT m.*, COUNT(v.id) AS version_count,
                          (SELECT p.version FROM registry_versions p
                           WHERE p.model = m.name AND p.stage = 'production'
                           ORDER BY p.id DESC LIMIT 1) AS production_version
                   FROM registry_models m LEFT JOIN registry_versions v ON v.model = m.name
                   GROUP BY m.name ORDER BY m.name LIMIT ? OFFSET ?""",
                [limit, offset],
            )
        )
        return rows, total

    def get_model(self, name: str) -> dict[str, Any]:
        """One model. Raises NotFoundError."""
        rows = list(self._store.db["registry_models"].rows_where("name = ?", [name]))
        if not rows:
            raise NotFoundError(f"no model named {name!r}")
        return rows[0]

    def list_versions(
        self,
        name: str,
        *,
        stage: Stage | None = None,
        framework: str | None = None,
        quantization: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Versions of one model, newest first, filtered by every given field.

        Raises:
            NotFoundError: no such model.
        """
        self.get_model(name)
        where, args = "model = ?", [name]
        for column, value in (("stage", stage.value if stage else None),
                              ("framework", framework), ("quantization", quantization)):
            if value is not None:
                where += f" AND {column} = ?"
                args.append(value)
        table = self._store.db["registry_versions"]
        total = table.count_where(where, args)
        rows = table.rows_where(where, args, order_by="id DESC", limit=limit, offset=offset)
        return [self._decode(r) for r in rows], total

    def get_version(self, name: str, version: str) -> dict[str, Any]:
        """One version record. Raises NotFoundError."""
        rows = list(
            self._store.db["registry_versions"].rows_where(
                "model = ? AND version = ?", [name, version]
            )
        )
        if not rows:
            raise NotFoundError(f"model {name!r} has no version {version!r}")
        return self._decode(rows[0])

    def artifact_path(self, name: str, version: str) -> Path:
        """The stored model file of a version. Raises NotFoundError."""
        record = self.get_version(name, version)
        path = self.artifacts.path_for(record["digest"])
        if not path.is_file():
            raise NotFoundError(f"artifact {record['digest']} is missing from the store")
        return path

    # -- writes ----------------------------------------------------------------

    def upload(
        self,
        name: str,
        version: str,
        stream: BinaryIO,
        metadata: UploadMetadata,
        actor: Actor,
        *,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Register a new immutable version from a model file stream, in stage draft.

        ``user_id`` is the human behind ``actor`` (the owner of an API token), used by
        the four-eyes rule of :meth:`approve`.

        Raises:
            InvalidMetadataError: bad name/version, unknown parent.
            VersionExistsError: ``name``/``version`` is already registered.
            InvalidArtifactError: the bytes are not a readable ONNX/TFLite model.
        """
        check_name(name)
        check_version(version)
        self._refuse_existing(name, version)
        with self.artifacts.stage(stream, max_bytes=self._max_bytes) as staged:
            info = inspect_model(staged.path)
            now = self._clock().isoformat()
            ref = actor_ref(actor)
            with self._store.transaction():
                self._refuse_existing(name, version)  # re-check inside the transaction
                parent_id = self._resolve_parent(name, metadata)
                db = self._store.db
                if not list(db["registry_models"].rows_where("name = ?", [name])):
                    model_row = {"name": name, "description": "", "created_at": now,
                                 "created_by": ref}
                    db["registry_models"].insert(model_row)
                    self._audit.record(actor, "model.create", "model", name, None, model_row)
                row = {
                    "model": name,
                    "version": version,
                    "digest": staged.digest,
                    "size_bytes": staged.size_bytes,
                    "framework": info.framework.value,
                    "quantization": metadata.quantization or info.quantization.value,
                    "signature": json.dumps(info.signature),
                    "metrics": json.dumps(metadata.metrics),
                    "reference_profile": json.dumps(metadata.reference_profile),
                    "lineage": json.dumps(metadata.lineage),
                    "parent_id": parent_id,
                    "description": metadata.description,
                    "created_at": now,
                    "created_by": ref,
                    "created_by_name": actor.name,
                    "created_by_user": user_id or actor.user_id,
                    "stage": Stage.DRAFT.value,
                    "stage_changed_at": now,
                }
                db["registry_versions"].insert(row)
                self.artifacts.commit(staged)
                record = self.get_version(name, version)
                self._audit.record(
                    actor, "model.version.upload", "model_version", f"{name}@{version}",
                    None, self._audit_view(record),
                )
        log.info("registered %s@%s (%s, %d bytes)", name, version, staged.digest, staged.size_bytes)
        return record

    def approve(
        self, name: str, version: str, reason: str, actor: Actor, *, user_id: str | None = None
    ) -> dict[str, Any]:
        """Record who approved a staging version for production, when and why.

        Rule: the approver must be an admin or an operator, and (four eyes, unless
        ``approval_requires_second_person`` is off) must not be the uploader, whatever
        their role. Approving an already approved version replaces nothing: it is refused.

        Raises:
            NotFoundError, ApprovalForbiddenError, InvalidTransitionError.
        """
        if not reason.strip():
            raise InvalidMetadataError("an approval needs a reason")
        with self._store.transaction():
            before = self.get_version(name, version)
            self._check_approver(before, actor, user_id or actor.user_id)
            if Stage(before["stage"]) not in APPROVABLE:
                raise InvalidTransitionError(
                    f"only versions in staging can be approved ({name}@{version} is "
                    f"{before['stage']})"
                )
            if before["approved_at"]:
                raise InvalidTransitionError(f"{name}@{version} is already approved")
            self._store.db["registry_versions"].update(
                before["id"],
                {
                    "approved_by": actor_ref(actor),
                    "approved_by_name": actor.name,
                    "approved_at": self._clock().isoformat(),
                    "approval_reason": reason.strip(),
                },
            )
            after = self.get_version(name, version)
            self._audit.record(
                actor, "model.version.approve", "model_version", f"{name}@{version}",
                self._audit_view(before), self._audit_view(after),
            )
        return after

    def transition(
        self, name: str, version: str, target: Stage, actor: Actor, reason: str = ""
    ) -> dict[str, Any]:
        """Move a version to ``target`` if the transition table allows it.

        Moving back to draft clears the approval (it must be approved again).
        Promoting a version to production archives no other version: several
        production versions may coexist (rollouts decide which devices run which).

        Raises:
            NotFoundError, InvalidTransitionError, ApprovalRequiredError.
        """
        with self._store.transaction():
            before = self.get_version(name, version)
            current = Stage(before["stage"])
            check_transition(current, target, approved=bool(before["approved_at"]))
            changes: dict[str, Any] = {
                "stage": target.value,
                "stage_changed_at": self._clock().isoformat(),
            }
            if target is Stage.DRAFT:
                changes.update(approved_by=None, approved_by_name=None, approved_at=None,
                               approval_reason=None)
            self._store.db["registry_versions"].update(before["id"], changes)
            after = self.get_version(name, version)
            audit_after = self._audit_view(after)
            if reason:
                audit_after["reason"] = reason
            self._audit.record(
                actor, "model.version.stage", "model_version", f"{name}@{version}",
                self._audit_view(before), audit_after,
            )
        return after

    # -- derived views -----------------------------------------------------------

    def compare(self, a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any]:
        """Compare version ``a`` with ``b`` (each ``(model, version)``)."""
        return compare_versions(self.get_version(*a), self.get_version(*b))

    def lineage(self, name: str, version: str) -> dict[str, list[dict[str, Any]]]:
        """Ancestors and descendants of a version as ``{"nodes", "edges"}``."""
        focus = self.get_version(name, version)
        rows = [self._decode(r) for r in self._store.db["registry_versions"].rows]
        return lineage_graph(focus["id"], rows)

    # -- helpers -----------------------------------------------------------------

    def _refuse_existing(self, name: str, version: str) -> None:
        table = self._store.db["registry_versions"]
        if table.count_where("model = ? AND version = ?", [name, version]):
            raise VersionExistsError(
                f"{name}@{version} already exists; versions are immutable, upload a new version"
            )

    def _resolve_parent(self, name: str, metadata: UploadMetadata) -> int | None:
        ref = metadata.parent_ref(name)
        if ref is None:
            return None
        try:
            return int(self.get_version(*ref)["id"])
        except NotFoundError as e:
            raise InvalidMetadataError(f"parent {ref[0]}@{ref[1]} does not exist") from e

    def _check_approver(self, record: dict[str, Any], actor: Actor, user_id: str | None) -> None:
        role = Role(actor.role) if actor.role in {r.value for r in Role} else None
        if role not in (Role.ADMIN, Role.OPERATOR):
            raise ApprovalForbiddenError("approval needs the admin or operator role")
        if not self._second_person:
            return
        same_user = user_id is not None and record.get("created_by_user") == user_id
        if same_user or record["created_by"] == actor_ref(actor):
            raise ApprovalForbiddenError(
                "nobody may approve their own upload (four eyes); ask another operator or "
                "an admin"
            )

    def _decode(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for key in _JSON_COLUMNS:
            out[key] = json.loads(out[key])
        out["parent"] = None
        if out.get("parent_id") is not None:
            parent = self._store.db["registry_versions"].get(out["parent_id"])
            out["parent"] = f"{parent['model']}@{parent['version']}"
        return out

    @staticmethod
    def _audit_view(record: dict[str, Any]) -> dict[str, Any]:
        return {k: record.get(k) for k in _AUDIT_KEYS}
