"""Signed device requests: the signer, the happy path, and every refusal (always 401)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from werkzeug.test import TestResponse

from edgefleet.fleet_server.updates.device_auth import (
    DEVICE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WINDOW_S,
    DeviceAuthenticator,
    DeviceAuthError,
    canonical_request,
    sign_request,
)
from tests.fleet_server.updates.harness import serving
from tests.fleet_server.updates.test_device_env import API, Device, UpdatesEnv, updates_env

ASSIGNMENT = f"{API}/device/assignment"
EVENTS = f"{API}/device/events"
NONCE = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[UpdatesEnv]:
    with updates_env(tmp_path) as environment:
        yield environment


@pytest.fixture
def device(env: UpdatesEnv) -> Device:
    return env.enroll()


def _assert_refused(rv: TestResponse) -> None:
    assert rv.status_code == 401, rv.json
    assert rv.json == {"error": {"code": "device_auth_failed",
                                 "message": "device authentication failed", "details": None}}


# -- the signer (pure) --------------------------------------------------------------------

def test_sign_request_signs_the_documented_string() -> None:
    key = Ed25519PrivateKey.generate()
    body = b'{"events": []}'
    headers = sign_request(key, "post", EVENTS, body, now=1_700_000_000.9, nonce=NONCE)
    assert set(headers) == {TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER}
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[NONCE_HEADER] == NONCE
    expected = (f"POST\n{EVENTS}\n1700000000\n{NONCE}\n"
                f"{hashlib.sha256(body).hexdigest()}").encode()
    assert canonical_request("POST", EVENTS, "1700000000", NONCE, body) == expected
    key.public_key().verify(base64.b64decode(headers[SIGNATURE_HEADER]), expected)
    # Ed25519 is deterministic: same inputs, same headers
    assert headers == sign_request(key, "POST", EVENTS, body, now=1_700_000_000, nonce=NONCE)
    with_id = sign_request(key, "POST", EVENTS, body, now=1_700_000_000, nonce=NONCE,
                           device_id="dev-1")
    assert with_id == {DEVICE_HEADER: "dev-1", **headers}


# -- happy path ---------------------------------------------------------------------------

def test_signed_request_is_accepted(env: UpdatesEnv, device: Device) -> None:
    rv = env.device_get(device, "/device/assignment")
    assert rv.status_code == 200, rv.json
    assert rv.json == {"target": None}


def test_signed_request_over_real_http(env: UpdatesEnv, device: Device) -> None:
    """The path the server verifies is the one a real HTTP client signs."""
    with serving(env.app) as url:
        rv = requests.get(url + ASSIGNMENT, headers=device.headers("GET", ASSIGNMENT),
                          timeout=10)
        assert rv.status_code == 200, rv.text
        body = json.dumps({"events": []}).encode()
        rv = requests.post(url + EVENTS, data=body, timeout=10,
                           headers={"Content-Type": "application/json",
                                    **device.headers("POST", EVENTS, body)})
        assert rv.status_code == 202, rv.text
        assert rv.json() == {"accepted": 0}
        bare = requests.get(url + ASSIGNMENT, timeout=10)
        assert bare.status_code == 401


# -- refusals -----------------------------------------------------------------------------

def test_bad_signature_is_refused(env: UpdatesEnv, device: Device) -> None:
    headers = device.headers("GET", ASSIGNMENT)
    sig = bytearray(base64.b64decode(headers[SIGNATURE_HEADER]))
    sig[0] ^= 1
    headers[SIGNATURE_HEADER] = base64.b64encode(bytes(sig)).decode()
    _assert_refused(env.client.get(ASSIGNMENT, headers=headers))


def test_garbage_signature_is_refused(env: UpdatesEnv, device: Device) -> None:
    headers = {**device.headers("GET", ASSIGNMENT), SIGNATURE_HEADER: "not base64!"}
    _assert_refused(env.client.get(ASSIGNMENT, headers=headers))


def test_signature_by_another_devices_key_is_refused(env: UpdatesEnv, device: Device) -> None:
    other = env.enroll()
    headers = device.headers("GET", ASSIGNMENT, key=other.key)
    assert headers[DEVICE_HEADER] == device.id
    _assert_refused(env.client.get(ASSIGNMENT, headers=headers))


def test_unenrolled_key_is_refused(env: UpdatesEnv, device: Device) -> None:
    headers = device.headers("GET", ASSIGNMENT, key=Ed25519PrivateKey.generate())
    _assert_refused(env.client.get(ASSIGNMENT, headers=headers))


@pytest.mark.parametrize("skew", [-(WINDOW_S + 5), WINDOW_S + 5, -86_400])
def test_timestamp_outside_the_window_is_refused(env: UpdatesEnv, device: Device,
                                                 skew: int) -> None:
    headers = device.headers("GET", ASSIGNMENT, now=time.time() + skew)
    _assert_refused(env.client.get(ASSIGNMENT, headers=headers))


def test_timestamp_inside_the_window_is_accepted(env: UpdatesEnv, device: Device) -> None:
    headers = device.headers("GET", ASSIGNMENT, now=time.time() - WINDOW_S + 30)
    assert env.client.get(ASSIGNMENT, headers=headers).status_code == 200


def test_replayed_nonce_is_refused(env: UpdatesEnv, device: Device) -> None:
    headers = device.headers("GET", ASSIGNMENT)
    assert env.client.get(ASSIGNMENT, headers=headers).status_code == 200
    _assert_refused(env.client.get(ASSIGNMENT, headers=headers))
    # the same nonce re-signed with a new timestamp is still a replay
    again = device.headers("GET", ASSIGNMENT, now=time.time() + 1,
                           nonce=headers[NONCE_HEADER])
    _assert_refused(env.client.get(ASSIGNMENT, headers=again))
    # ... in another letter case too
    upper = device.headers("GET", ASSIGNMENT, nonce=headers[NONCE_HEADER].upper())
    _assert_refused(env.client.get(ASSIGNMENT, headers=upper))


def test_same_nonce_of_another_device_is_its_own(env: UpdatesEnv, device: Device) -> None:
    other = env.enroll()
    assert env.client.get(ASSIGNMENT, headers=device.headers(
        "GET", ASSIGNMENT, nonce=NONCE)).status_code == 200
    assert env.client.get(ASSIGNMENT, headers=other.headers(
        "GET", ASSIGNMENT, nonce=NONCE)).status_code == 200


def test_refused_signature_does_not_burn_the_nonce(env: UpdatesEnv, device: Device) -> None:
    forged = device.headers("GET", ASSIGNMENT, nonce=NONCE, key=Ed25519PrivateKey.generate())
    _assert_refused(env.client.get(ASSIGNMENT, headers=forged))
    genuine = device.headers("GET", ASSIGNMENT, nonce=NONCE)
    assert env.client.get(ASSIGNMENT, headers=genuine).status_code == 200


def test_decommissioned_device_is_refused(env: UpdatesEnv, device: Device) -> None:
    env.decommission(device)
    _assert_refused(env.device_get(device, "/device/assignment"))
    _assert_refused(env.post_events(device, []))


def test_unknown_device_is_refused(env: UpdatesEnv, device: Device) -> None:
    ghost = Device("dev-0000000000000000", device.key)
    _assert_refused(env.device_get(ghost, "/device/assignment"))


def test_tampered_body_is_refused(env: UpdatesEnv, device: Device) -> None:
    signed = json.dumps({"events": []}).encode()
    sent = json.dumps({"events": [{"ts": 1.0, "kind": "state", "state": "IDLE"}]}).encode()
    rv = env.client.post(EVENTS, data=sent, content_type="application/json",
                         headers=device.headers("POST", EVENTS, signed))
    _assert_refused(rv)


def test_signature_for_another_path_or_method_is_refused(env: UpdatesEnv,
                                                         device: Device) -> None:
    body = json.dumps({"events": []}).encode()
    rv = env.client.post(EVENTS, data=body, content_type="application/json",
                         headers=device.headers("POST", ASSIGNMENT, body))
    _assert_refused(rv)
    rv = env.client.post(EVENTS, data=body, content_type="application/json",
                         headers=device.headers("PUT", EVENTS, body))
    _assert_refused(rv)
    # the signed path includes the /api/v1 prefix
    _assert_refused(env.client.get(ASSIGNMENT, headers=device.headers(
        "GET", "/device/assignment")))


@pytest.mark.parametrize("missing", [DEVICE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER,
                                     SIGNATURE_HEADER])
def test_missing_header_is_refused(env: UpdatesEnv, device: Device, missing: str) -> None:
    headers = device.headers("GET", ASSIGNMENT)
    del headers[missing]
    _assert_refused(env.client.get(ASSIGNMENT, headers=headers))


@pytest.mark.parametrize(("header", "value"), [
    (TIMESTAMP_HEADER, "12.5"), (TIMESTAMP_HEADER, "-5"), (TIMESTAMP_HEADER, "soon"),
    (NONCE_HEADER, "xyz"), (NONCE_HEADER, "0" * 31), (NONCE_HEADER, "0" * 33),
    (DEVICE_HEADER, "../dev"), (DEVICE_HEADER, "x" * 300),
])
def test_malformed_header_is_refused(env: UpdatesEnv, device: Device, header: str,
                                     value: str) -> None:
    headers = {**device.headers("GET", ASSIGNMENT), header: value}
    _assert_refused(env.client.get(ASSIGNMENT, headers=headers))


def test_no_headers_at_all_is_refused_before_the_body_is_validated(env: UpdatesEnv) -> None:
    _assert_refused(env.client.post(EVENTS, data=b"not json", content_type="application/json"))
    _assert_refused(env.client.get(ASSIGNMENT))


def test_refusals_are_logged_without_secrets(env: UpdatesEnv, device: Device,
                                             caplog: pytest.LogCaptureFixture) -> None:
    headers = device.headers("GET", ASSIGNMENT, key=Ed25519PrivateKey.generate())
    with caplog.at_level(logging.INFO, logger="edgefleet.fleet_server.updates.device_auth"):
        _assert_refused(env.client.get(ASSIGNMENT, headers=headers))
    records = [r for r in caplog.records if r.name.endswith("device_auth")]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    text = records[0].getMessage()
    assert "bad signature" in text
    assert device.id in text
    assert headers[SIGNATURE_HEADER] not in text
    assert headers[NONCE_HEADER] not in text


# -- the authenticator's nonce store ------------------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_old_nonces_are_pruned(env: UpdatesEnv, device: Device) -> None:
    clock = _Clock()
    auth = DeviceAuthenticator(env.services.store, clock=clock)
    count: Callable[..., int] = env.services.store.db["device_request_nonces"].count_where

    def call(nonce: str) -> str:
        headers = device.headers("GET", ASSIGNMENT, now=clock.now, nonce=nonce)
        return auth.verify("GET", ASSIGNMENT, headers, b"")

    first = secrets.token_hex(16)
    assert call(first) == device.id
    with pytest.raises(DeviceAuthError, match="replayed nonce"):
        call(first)
    clock.now += WINDOW_S + 2
    assert call(secrets.token_hex(16)) == device.id
    assert count("nonce = ?", [first]) == 0  # pruned: its timestamp is stale now
    assert count() == 1
