"""Enrollment tokens and enrolling, against a real SQLite store."""

from __future__ import annotations

import json
import threading

import pytest

from edgefleet.fleet_server.devices.credentials import hash_secret
from edgefleet.fleet_server.devices.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    TokenExpiredError,
    TokenInvalidError,
    TokenRevokedError,
    TokenUsedError,
)

from .conftest import OPERATOR, DeviceServices, new_public_key


def test_token_is_stored_hashed_and_shown_once(ds: DeviceServices):
    record, secret = ds.enrollment.create_token(OPERATOR, ttl_s=600, note="line 3")
    assert secret.startswith("eft_") and len(secret) > 40
    row = ds.store.db["enrollment_tokens"].get(record["id"])
    assert row["token_hash"] == hash_secret(secret)
    dump = json.dumps(list(ds.store.db["enrollment_tokens"].rows))
    dump += json.dumps(ds.audit.list()[0])
    assert secret not in dump
    assert "token_hash" not in record
    listed, total = ds.enrollment.list_tokens()
    assert total == 1 and "token_hash" not in listed[0]


def test_enroll_issues_device_and_broker_password(ds: DeviceServices):
    _, secret = ds.enrollment.create_token(OPERATOR)
    result = ds.enrollment.enroll(secret, new_public_key(), hardware={"hostname": "cam-7"})
    assert result.broker_username == result.device_id
    device = ds.devices.get_device(result.device_id)
    assert device["name"] == "cam-7" and device["status"] == "active"
    assert device["inventory"] == {"hardware": {"hostname": "cam-7"}}
    assert ds.devices.verify_broker_password(result.device_id, result.broker_password)
    assert not ds.devices.verify_broker_password(result.device_id, result.broker_password + "x")
    assert not ds.devices.verify_broker_password("dev-unknown", result.broker_password)
    stored = ds.store.db["devices"].get(result.device_id)
    assert result.broker_password not in json.dumps(stored)
    entries, _ = ds.audit.list(action="device.enroll")
    assert entries[0]["actor"] == {"kind": "device", "id": result.device_id, "name": "cam-7",
                                   "role": ""}


def test_reused_token_refused(ds: DeviceServices):
    _, secret = ds.enrollment.create_token(OPERATOR)
    ds.enrollment.enroll(secret, new_public_key())
    with pytest.raises(TokenUsedError) as e:
        ds.enrollment.enroll(secret, new_public_key())
    assert e.value.status == 409
    assert ds.store.db["devices"].count == 1


def test_concurrent_use_of_one_token_enrolls_one_device(ds: DeviceServices):
    _, secret = ds.enrollment.create_token(OPERATOR)
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            ds.enrollment.enroll(secret, new_public_key())
            outcomes.append("ok")
        except TokenUsedError:
            outcomes.append("used")

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "used", "used", "used"]
    assert ds.store.db["devices"].count == 1


def test_expired_token_refused(ds: DeviceServices):
    _, secret = ds.enrollment.create_token(OPERATOR, ttl_s=60)
    ds.clock.advance(61)
    with pytest.raises(TokenExpiredError) as e:
        ds.enrollment.enroll(secret, new_public_key())
    assert e.value.status == 410
    assert ds.enrollment.list_tokens(active_only=True)[1] == 0


def test_forged_and_revoked_tokens_refused(ds: DeviceServices):
    record, secret = ds.enrollment.create_token(OPERATOR)
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    with pytest.raises(TokenInvalidError) as e:
        ds.enrollment.enroll(forged, new_public_key())
    assert e.value.status == 401
    with pytest.raises(TokenInvalidError):
        ds.enrollment.enroll("eft_" + "x" * 43, new_public_key())
    ds.enrollment.revoke_token(record["id"], OPERATOR)
    with pytest.raises(TokenRevokedError) as e2:
        ds.enrollment.enroll(secret, new_public_key())
    assert e2.value.status == 410
    assert ds.store.db["devices"].count == 0


def test_revoking_a_used_token_is_a_conflict(ds: DeviceServices):
    record, secret = ds.enrollment.create_token(OPERATOR)
    ds.enrollment.enroll(secret, new_public_key())
    with pytest.raises(ConflictError):
        ds.enrollment.revoke_token(record["id"], OPERATOR)
    with pytest.raises(NotFoundError):
        ds.enrollment.revoke_token("et-nope", OPERATOR)


def test_token_bound_to_group_puts_device_in_it(ds: DeviceServices):
    with pytest.raises(NotFoundError):
        ds.enrollment.create_token(OPERATOR, group="lobby")
    ds.groups.create_group("lobby", OPERATOR)
    _, secret = ds.enrollment.create_token(OPERATOR, group="lobby")
    result = ds.enrollment.enroll(secret, new_public_key())
    assert result.group_name == "lobby"
    assert ds.devices.get_device(result.device_id)["group"] == "lobby"


def test_bad_keys_and_duplicate_keys_refused(ds: DeviceServices):
    _, s1 = ds.enrollment.create_token(OPERATOR)
    for bad in ("not base64!", "AAAA", "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----"):
        with pytest.raises(InvalidRequestError):
            ds.enrollment.enroll(s1, bad)
    key = new_public_key()
    ds.enrollment.enroll(s1, key)  # a refused attempt does not spend the token
    _, s2 = ds.enrollment.create_token(OPERATOR)
    with pytest.raises(ConflictError):
        ds.enrollment.enroll(s2, key)


def test_ttl_bounds(ds: DeviceServices):
    for ttl in (0, -5, 31 * 24 * 3600):
        with pytest.raises(InvalidRequestError):
            ds.enrollment.create_token(OPERATOR, ttl_s=ttl)
