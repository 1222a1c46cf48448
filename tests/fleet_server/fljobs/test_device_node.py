"""``POST /device/fl-node`` (a device registers its own SuperNode key, device-signed) and
the decommission hook, against the server's real SuperLink (TLS + SuperNode auth, one per
module: it takes seconds to start)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from werkzeug.test import TestResponse

from edgefleet.federated.flower.tls import make_node_key
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.devices.enrollment import EnrollmentService
from edgefleet.fleet_server.devices.service import device_service
from edgefleet.fleet_server.updates.device_auth import sign_request
from tests.federated.conftest import DigitsSplit
from tests.fleet_server.fljobs.conftest import API, FlEnv, make_fl_env

PATH = f"{API}/device/fl-node"


@dataclass
class Device:
    id: str
    key: Ed25519PrivateKey


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, digits: DigitsSplit) -> Iterator[FlEnv]:
    fl = make_fl_env(tmp_path_factory.mktemp("fl-device-node"), digits, n_devices=0)
    try:
        yield fl
    finally:
        fl.svc.close()
        fl.services.store.close()
    assert not fl.svc.federation.started


def enroll(env: FlEnv) -> Device:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    enrollment = EnrollmentService(env.services.store, env.services.audit)
    _, secret = enrollment.create_token(SYSTEM)
    return Device(enrollment.enroll(secret, base64.b64encode(raw).decode()).device_id, key)


def node_pem(tmp: Path) -> str:
    return make_node_key(tmp / f"{secrets.token_hex(4)}.key").public_key_pem.decode()


def post(env: FlEnv, device: Device, body: Any, *,
         signer: Ed25519PrivateKey | None = None) -> TestResponse:
    raw = json.dumps(body).encode()
    headers = sign_request(signer or device.key, "POST", PATH, raw, now=time.time(),
                           nonce=secrets.token_hex(16), device_id=device.id)
    return env.client.post(PATH, data=raw, content_type="application/json", headers=headers)


def row(env: FlEnv, device: Device) -> dict[str, Any] | None:
    rows = list(env.services.store.db["fl_nodes"].rows_where("device_id = ?", [device.id]))
    return rows[0] if rows else None


def audit_actions(env: FlEnv, device: Device) -> list[str]:
    rows = env.services.store.db.execute(
        "SELECT action FROM audit_log WHERE target_id = ? AND action LIKE 'fljob.node.%'"
        " ORDER BY id", [device.id]).fetchall()
    return [r[0] for r in rows]


def test_a_device_registers_its_own_key_and_learns_how_to_join(env: FlEnv,
                                                                tmp_path: Path) -> None:
    device = enroll(env)
    pem = node_pem(tmp_path)
    rv = post(env, device, {"public_key": pem})
    assert rv.status_code == 201, rv.json
    answer = rv.json
    superlink = env.svc.federation.federation().superlink
    assert answer["device_id"] == device.id
    assert answer["superlink"] == superlink.address
    assert answer["ca_cert"] == superlink.tls.ca_cert.read_text()
    node_id = answer["node_id"]
    assert env.svc.federation.node_status(node_id) == "registered"
    stored = row(env, device)
    assert stored is not None and int(stored["node_id"]) == node_id
    assert stored["registered_by"] == f"device:{device.id}"
    assert env.svc.node_devices()[node_id] == device.id

    again = post(env, device, {"public_key": pem.replace("\n", "\r\n")})  # same key
    assert again.status_code == 200, again.json
    assert again.json["node_id"] == node_id
    assert audit_actions(env, device) == ["fljob.node.register"]

    # the device id comes from the signature, never from the body
    other = enroll(env)
    rv = post(env, device, {"public_key": node_pem(tmp_path), "device_id": other.id})
    assert rv.status_code == 400
    assert row(env, other) is None


def test_a_new_key_replaces_the_old_node(env: FlEnv, tmp_path: Path) -> None:
    device = enroll(env)
    first = post(env, device, {"public_key": node_pem(tmp_path)}).json["node_id"]
    rv = post(env, device, {"public_key": node_pem(tmp_path)})
    assert rv.status_code == 201, rv.json
    second = rv.json["node_id"]
    assert second != first
    assert env.svc.federation.node_status(first) == "unregistered"
    assert env.svc.federation.node_status(second) == "registered"
    stored = row(env, device)
    assert stored is not None and int(stored["node_id"]) == second
    assert audit_actions(env, device) == ["fljob.node.register", "fljob.node.replace"]


def _other_keys() -> dict[str, str]:
    def spki(key: Any) -> str:
        return key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    p384 = ec.generate_private_key(ec.SECP384R1())
    return {
        "p256": spki(ec.generate_private_key(ec.SECP256R1())),
        "rsa": spki(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ed25519": spki(Ed25519PrivateKey.generate()),
        "private": p384.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode(),
        "two keys": spki(p384) + spki(p384),
        "garbage": "-----BEGIN PUBLIC KEY-----\n" + "A" * 200 + "\n-----END PUBLIC KEY-----",
        "too long": "-----BEGIN PUBLIC KEY-----\n" + "A" * 2000 + "\n-----END PUBLIC KEY-----",
        "short": "key",
    }


def test_only_p384_pem_public_keys_are_accepted(env: FlEnv) -> None:
    device = enroll(env)
    for name, pem in _other_keys().items():
        rv = post(env, device, {"public_key": pem})
        assert rv.status_code == 400, name
    assert post(env, device, {}).status_code == 400
    assert post(env, device, {"public_key": 5}).status_code == 400
    assert row(env, device) is None


def test_unsigned_forged_and_decommissioned_devices_are_refused(env: FlEnv,
                                                                  tmp_path: Path) -> None:
    device = enroll(env)
    body = {"public_key": node_pem(tmp_path)}
    unsigned = env.client.post(PATH, json=body)
    assert unsigned.status_code == 401
    assert unsigned.json["error"]["code"] == "device_auth_failed"
    forged = post(env, device, body, signer=Ed25519PrivateKey.generate())
    assert forged.status_code == 401
    operator = env.client.post(PATH, json=body, headers=env.auth(Role.ADMIN))
    assert operator.status_code == 401
    device_service(env.services).decommission(device.id, SYSTEM, "test")
    assert post(env, device, body).status_code == 401
    assert row(env, device) is None


def test_decommission_unregisters_the_node(env: FlEnv, tmp_path: Path) -> None:
    device = enroll(env)
    node_id = post(env, device, {"public_key": node_pem(tmp_path)}).json["node_id"]
    device_service(env.services).decommission(device.id, SYSTEM, "retired")
    assert row(env, device) is None
    assert node_id not in env.svc.node_devices()
    assert env.svc.federation.node_status(node_id) == "unregistered"
    assert audit_actions(env, device) == ["fljob.node.register", "fljob.node.unregister"]
    # a device without a node decommissions as before
    bare = enroll(env)
    device_service(env.services).decommission(bare.id, SYSTEM, "retired")
    assert audit_actions(env, bare) == []


def test_a_decommission_while_the_superlink_is_down_is_applied_at_its_next_start(
        env: FlEnv, tmp_path: Path) -> None:
    device = enroll(env)
    node_id = post(env, device, {"public_key": node_pem(tmp_path)}).json["node_id"]
    env.svc.federation.stop()
    device_service(env.services).decommission(device.id, SYSTEM, "retired")
    assert row(env, device) is None
    # the next use starts the SuperLink again, which unregisters the orphaned node
    assert env.svc.federation.node_status(node_id) == "unregistered"
