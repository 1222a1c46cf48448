"""API tokens: a random secret shown once, stored as sha256, with role, scopes and expiry.

A token's effective role is the lower of its own role and its owner's current role; a
token whose owner is disabled, or which is revoked or expired, does not authenticate.
Tokens without an owner are created by ``edgefleet server token create`` on the server
machine (whoever can read the data dir is already all-powerful).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet.fleet_server.audit import Actor, AuditLog
from edgefleet.fleet_server.auth.errors import Conflict, Forbidden, NotFound
from edgefleet.fleet_server.auth.passwords import sha256_hex
from edgefleet.fleet_server.auth.roles import Role, Scope
from edgefleet.fleet_server.storage import Store, utcnow

TOKEN_PREFIX = "efa_"  # noqa: S105 - a label, not a secret


@dataclass(frozen=True)
class ApiToken:
    """A stored token (never its secret)."""

    id: str
    name: str
    user_id: str | None
    role: Role
    scopes: frozenset[Scope]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None

    def to_json(self) -> dict[str, Any]:
        """The public representation used by the API and the audit log."""
        return {
            "id": self.id, "name": self.name, "user_id": self.user_id,
            "role": self.role.value, "scopes": sorted(s.value for s in self.scopes),
            "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked_at": self.revoked_at, "last_used_at": self.last_used_at,
        }


def _token(row: dict[str, Any]) -> ApiToken:
    return ApiToken(
        id=row["id"], name=row["name"], user_id=row["user_id"], role=Role(row["role"]),
        scopes=frozenset(Scope(s) for s in json.loads(row["scopes"])),
        created_at=row["created_at"], expires_at=row["expires_at"],
        revoked_at=row["revoked_at"], last_used_at=row["last_used_at"],
    )


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat()


class TokenService:
    """API tokens in ``store``, audited in ``audit``."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit

    def get(self, token_id: str) -> ApiToken:
        """Raises NotFound."""
        rows = list(self._store.db.table("api_tokens").rows_where("id = ?", [token_id]))
        if not rows:
            raise NotFound(f"token {token_id} not found")
        return _token(rows[0])

    def list(self, *, user_id: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[ApiToken], int]:
        """Tokens (of one user when given), newest first, and the total."""
        rows, total = self._store.select_page(
            "api_tokens", where={"user_id": user_id}, order_by="created_at DESC, id",
            limit=limit, offset=offset,
        )
        return [_token(r) for r in rows], total

    def create(
        self,
        actor: Actor,
        *,
        name: str,
        role: Role,
        user_id: str | None,
        owner_role: Role | None,
        scopes: Iterable[Scope] = (Scope.READ, Scope.WRITE),
        ttl_s: int | None = None,
        now: datetime | None = None,
    ) -> tuple[ApiToken, str]:
        """Create a token; returns it and its secret (shown once, never stored).

        Raises:
            Forbidden: ``role`` is above ``owner_role``.
            Conflict: no scopes given.
        """
        if owner_role is not None and not owner_role.at_least(role):
            raise Forbidden(f"a {owner_role.value} cannot create a {role.value} token")
        scope_set = frozenset(scopes)
        if not scope_set:
            raise Conflict("a token needs at least one scope")
        now = now or datetime.now(UTC)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = {
            "id": "t_" + secrets.token_hex(8), "name": name, "user_id": user_id,
            "role": role.value, "scopes": json.dumps(sorted(s.value for s in scope_set)),
            "token_hash": sha256_hex(secret), "created_at": _iso(now),
            "expires_at": _iso(now + timedelta(seconds=ttl_s)) if ttl_s else None,
            "revoked_at": None, "last_used_at": None,
        }
        with self._store.transaction() as db:
            db.table("api_tokens").insert(row)
            token = _token(row)
            self._audit.record(actor, "token.create", "token", token.id, None, token.to_json())
        return token, secret

    def revoke(self, actor: Actor, token_id: str) -> ApiToken:
        """Revoke a token (idempotent). Raises NotFound."""
        with self._store.transaction() as db:
            before = self.get(token_id)
            if before.revoked_at is not None:
                return before
            db.table("api_tokens").update(token_id, {"revoked_at": utcnow()})
            after = self.get(token_id)
            self._audit.record(actor, "token.revoke", "token", token_id,
                               before.to_json(), after.to_json())
        return after

    def verify(self, secret: str, now: datetime | None = None) -> ApiToken | None:
        """The live token with this secret, or None (unknown, revoked or expired)."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        rows = list(self._store.db.table("api_tokens").rows_where(
            "token_hash = ?", [sha256_hex(secret)]))
        if not rows:
            return None
        token = _token(rows[0])
        now = now or datetime.now(UTC)
        if token.revoked_at is not None:
            return None
        if token.expires_at is not None and datetime.fromisoformat(token.expires_at) <= now:
            return None
        self._store.db.execute(
            "UPDATE api_tokens SET last_used_at = ? WHERE id = ?", [_iso(now), token.id])
        return token
