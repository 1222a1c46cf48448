"""API tokens: stored hashed, shown once, expire, revoke, capped by the owner's role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.fleet_server.audit import COMPONENT as AUDIT
from edgefleet.fleet_server.audit import SYSTEM, AuditLog
from edgefleet.fleet_server.auth.errors import Conflict, Forbidden, NotFound
from edgefleet.fleet_server.auth.passwords import sha256_hex
from edgefleet.fleet_server.auth.roles import Role, Scope
from edgefleet.fleet_server.auth.schema import COMPONENT as AUTH
from edgefleet.fleet_server.auth.tokens import TOKEN_PREFIX, TokenService
from edgefleet.fleet_server.storage import Store


@pytest.fixture
def tokens(tmp_path: Path) -> TokenService:
    store = Store.open(tmp_path / "db.sqlite")
    store.migrate([AUDIT, AUTH])
    yield TokenService(store, AuditLog(store))
    store.close()


def test_secret_is_stored_only_as_sha256(tokens: TokenService) -> None:
    token, secret = tokens.create(SYSTEM, name="ci", role=Role.OPERATOR, user_id=None,
                                  owner_role=None)
    assert secret.startswith(TOKEN_PREFIX) and len(secret) > 40
    dump = "".join(str(r) for r in tokens._store.db.execute("SELECT * FROM api_tokens"))
    assert secret not in dump and sha256_hex(secret) in dump
    audit = "".join(str(r) for r in tokens._store.db.execute("SELECT * FROM audit_log"))
    assert secret not in audit and sha256_hex(secret) not in audit
    verified = tokens.verify(secret)
    assert verified is not None and verified.id == token.id
    assert verified.scopes == frozenset({Scope.READ, Scope.WRITE})


def test_unknown_and_malformed_secrets(tokens: TokenService) -> None:
    tokens.create(SYSTEM, name="ci", role=Role.VIEWER, user_id=None, owner_role=None)
    assert tokens.verify(TOKEN_PREFIX + "forged") is None
    assert tokens.verify("no-prefix") is None
    assert tokens.verify(TOKEN_PREFIX + "x" * 500) is None


def test_expiry(tokens: TokenService) -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    _, secret = tokens.create(SYSTEM, name="short", role=Role.VIEWER, user_id=None,
                              owner_role=None, ttl_s=60, now=t0)
    assert tokens.verify(secret, now=t0 + timedelta(seconds=59)) is not None
    assert tokens.verify(secret, now=t0 + timedelta(seconds=60)) is None


def test_revocation_is_audited_and_idempotent(tokens: TokenService) -> None:
    token, secret = tokens.create(SYSTEM, name="ci", role=Role.ADMIN, user_id=None,
                                  owner_role=None)
    revoked = tokens.revoke(SYSTEM, token.id)
    assert revoked.revoked_at is not None
    assert tokens.verify(secret) is None
    assert tokens.revoke(SYSTEM, token.id).revoked_at == revoked.revoked_at
    actions = [e["action"] for e in tokens._audit.list()[0]]
    assert actions == ["token.revoke", "token.create"]
    with pytest.raises(NotFound):
        tokens.revoke(SYSTEM, "t_missing")


def test_role_capped_by_owner_and_scopes_required(tokens: TokenService) -> None:
    with pytest.raises(Forbidden):
        tokens.create(SYSTEM, name="x", role=Role.ADMIN, user_id=None,
                      owner_role=Role.OPERATOR)
    with pytest.raises(Conflict):
        tokens.create(SYSTEM, name="x", role=Role.VIEWER, user_id=None, owner_role=None,
                      scopes=[])
    token, _ = tokens.create(SYSTEM, name="ro", role=Role.VIEWER, user_id=None,
                             owner_role=Role.OPERATOR, scopes=[Scope.READ])
    assert token.scopes == frozenset({Scope.READ})


def test_list_newest_first(tokens: TokenService) -> None:
    for i in range(3):
        tokens.create(SYSTEM, name=f"t{i}", role=Role.VIEWER, user_id=None, owner_role=None)
    items, total = tokens.list(limit=2)
    assert total == 3 and len(items) == 2
