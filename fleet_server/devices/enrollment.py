"""EnrollmentService: one-time expiring enrollment tokens and the enroll operation.

A token secret is shown once at creation and stored as a sha256; enrolling consumes
it atomically (``UPDATE ... WHERE used_at IS NULL``), so two devices racing with the
same token cannot both succeed.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet.fleet_server.audit import Actor, ActorKind, AuditLog
from edgefleet.fleet_server.broker.mosquitto import mosquitto_hash
from edgefleet.fleet_server.devices.credentials import (
    TOKEN_PREFIX,
    hash_secret,
    new_device_id,
    new_secret,
    normalize_public_key,
)
from edgefleet.fleet_server.devices.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    TokenExpiredError,
    TokenInvalidError,
    TokenRevokedError,
    TokenUsedError,
)
from edgefleet.fleet_server.devices.groups import check_group_name
from edgefleet.fleet_server.devices.model import DeviceStatus
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL_S = 24 * 3600
MAX_TOKEN_TTL_S = 30 * 24 * 3600
_TOKEN_PUBLIC = ("id", "group_name", "note", "created_at", "created_by", "expires_at",
                 "used_at", "used_by_device", "revoked_at")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Enrollment:
    """What enrolling returns; ``broker_password`` exists only here, never stored."""

    device_id: str
    broker_username: str
    broker_password: str
    group_name: str | None


class EnrollmentService:
    """Creates, lists and revokes enrollment tokens; enrolls devices with them."""

    def __init__(
        self, store: Store, audit: AuditLog, *, clock: Callable[[], datetime] = _now
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock

    def create_token(
        self,
        actor: Actor,
        *,
        ttl_s: int = DEFAULT_TOKEN_TTL_S,
        group: str | None = None,
        note: str = "",
    ) -> tuple[dict[str, Any], str]:
        """Create a one-time token; returns ``(public record, secret)``.

        Raises:
            InvalidRequestError: ttl out of range. NotFoundError: unknown group.
        """
        if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
            raise InvalidRequestError(f"ttl_s must be between 1 and {MAX_TOKEN_TTL_S}")
        secret = new_secret(TOKEN_PREFIX)
        now = self._clock()
        row = {
            "id": "et-" + secrets.token_hex(6),
            "token_hash": hash_secret(secret),
            "group_name": group,
            "note": note,
            "created_at": now.isoformat(),
            "created_by": f"{actor.kind.value}:{actor.id}",
            "expires_at": (now + timedelta(seconds=ttl_s)).isoformat(),
            "used_at": None,
            "used_by_device": None,
            "revoked_at": None,
        }
        with self._store.transaction() as db:
            if group is not None:
                check_group_name(group)
                if not db["device_groups"].count_where("name = ?", [group]):
                    raise NotFoundError(f"no device group named {group!r}")
            db["enrollment_tokens"].insert(row)
            public = _public(row)
            self._audit.record(actor, "enrollment_token.create", "enrollment_token",
                               row["id"], None, public)
        return public, secret

    def list_tokens(
        self, *, active_only: bool = False, limit: int = 50, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Tokens without their hashes, newest first."""
        where = None
        args: list[Any] = []
        if active_only:
            where = "used_at IS NULL AND revoked_at IS NULL AND expires_at > ?"
            args = [self._clock().isoformat()]
        table = self._store.db["enrollment_tokens"]
        total = table.count_where(where, args) if where else table.count
        rows = table.rows_where(where, args, order_by="created_at DESC, id",
                                limit=limit, offset=offset)
        return [_public(r) for r in rows], total

    def revoke_token(self, token_id: str, actor: Actor) -> dict[str, Any]:
        """Revoke an unused token. Raises NotFoundError, ConflictError (already used)."""
        with self._store.transaction() as db:
            rows = list(db["enrollment_tokens"].rows_where("id = ?", [token_id]))
            if not rows:
                raise NotFoundError(f"no enrollment token {token_id!r}")
            before = _public(rows[0])
            if before["used_at"]:
                raise ConflictError("token was already used; decommission the device instead")
            if before["revoked_at"]:
                return before
            db["enrollment_tokens"].update(token_id, {"revoked_at": self._clock().isoformat()})
            after = _public(db["enrollment_tokens"].get(token_id))
            self._audit.record(actor, "enrollment_token.revoke", "enrollment_token",
                               token_id, before, after)
        return after

    def enroll(
        self,
        token: str,
        public_key: str,
        hardware: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> Enrollment:
        """Consume ``token`` and register a new device with ``public_key``.

        Raises:
            TokenInvalidError (401), TokenUsedError (409), TokenExpiredError (410),
            TokenRevokedError (410), InvalidRequestError (bad key / hardware),
            ConflictError (the key is already enrolled).
        """
        pem, fingerprint = normalize_public_key(public_key)
        hardware = dict(hardware or {})
        if len(json.dumps(hardware, default=str)) > 16_384:
            raise InvalidRequestError("hardware info is larger than 16 KiB")
        now = self._clock()
        device_id = new_device_id()
        password = new_secret()
        with self._store.transaction() as db:
            rows = list(db["enrollment_tokens"].rows_where("token_hash = ?", [hash_secret(token)]))
            if not rows:
                raise TokenInvalidError("unknown enrollment token")
            tok = rows[0]
            if tok["used_at"]:
                raise TokenUsedError("enrollment token was already used")
            if tok["revoked_at"]:
                raise TokenRevokedError("enrollment token was revoked")
            if datetime.fromisoformat(tok["expires_at"]) <= now:
                raise TokenExpiredError("enrollment token has expired")
            if db["devices"].count_where("key_fingerprint = ?", [fingerprint]):
                raise ConflictError("this public key is already enrolled")
            cur = db.execute(
                "UPDATE enrollment_tokens SET used_at = ?, used_by_device = ?"
                " WHERE id = ? AND used_at IS NULL",
                [now.isoformat(), device_id, tok["id"]],
            )
            if cur.rowcount != 1:  # pragma: no cover - guarded by BEGIN IMMEDIATE
                raise TokenUsedError("enrollment token was already used")
            device = {
                "id": device_id,
                "name": (name or str(hardware.get("hostname") or device_id))[:128],
                "status": DeviceStatus.ACTIVE.value,
                "group_name": tok["group_name"],
                "public_key_pem": pem,
                "key_fingerprint": fingerprint,
                "broker_password_hash": hash_secret(password),
                "broker_mosquitto_hash": mosquitto_hash(password),
                "inventory": json.dumps({"hardware": hardware}, default=str),
                "enrolled_at": now.isoformat(),
                "enrollment_token_id": tok["id"],
            }
            db["devices"].insert(device)
            device_actor = Actor(ActorKind.DEVICE, device_id, device["name"], "")
            self._audit.record(
                device_actor, "device.enroll", "device", device_id, None,
                {"id": device_id, "name": device["name"], "group": tok["group_name"],
                 "key_fingerprint": fingerprint, "enrollment_token_id": tok["id"]},
            )
        log.info("device %s enrolled with token %s", device_id, tok["id"])
        return Enrollment(device_id, device_id, password, tok["group_name"])


def _public(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in _TOKEN_PUBLIC}
