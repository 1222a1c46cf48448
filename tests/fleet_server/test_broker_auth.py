"""ServerBrokerAuth: the service account, enrolled devices, topic rules, decommission."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.broker import BrokerAuth
from edgefleet.fleet_server.broker_auth import ServerBrokerAuth
from edgefleet.fleet_server.datadir import BROKER_SERVICE_USER, load_secrets
from edgefleet.fleet_server.devices import device_service
from tests.fleet_server.support import Env


def _enroll(env: Env) -> dict[str, str]:
    op = env.auth(Role.OPERATOR)
    token = env.client.post("/api/v1/enrollment-tokens", headers=op, json={}).json["token"]
    pem = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    rv = env.client.post("/api/v1/enroll", json={"token": token, "public_key": pem})
    assert rv.status_code == 201, rv.json
    return {"id": rv.json["device_id"], **rv.json["broker"]}


def _auth(env: Env) -> ServerBrokerAuth:
    return ServerBrokerAuth(env.services.store, device_service(env.services),
                            BROKER_SERVICE_USER)


def test_is_a_broker_auth(env: Env) -> None:
    assert isinstance(_auth(env), BrokerAuth)


def test_service_account(env: Env) -> None:
    auth = _auth(env)
    password = load_secrets(env.init.data_dir).broker_password
    assert auth.authenticate(BROKER_SERVICE_USER, password)
    assert auth.authenticate(BROKER_SERVICE_USER, password)  # cached path
    assert not auth.authenticate(BROKER_SERVICE_USER, password + "x")
    assert not auth.authenticate(BROKER_SERVICE_USER, "")
    assert auth.may_publish(BROKER_SERVICE_USER, "edgefleet/v1/d/any/desired")
    assert auth.may_subscribe(BROKER_SERVICE_USER, "edgefleet/v1/#")
    assert not auth.may_publish(BROKER_SERVICE_USER, "other/topic")


def test_device_credentials_and_topics(env: Env) -> None:
    auth = _auth(env)
    device = _enroll(env)
    other = _enroll(env)
    assert device["username"] == device["id"]
    assert auth.authenticate(device["username"], device["password"])
    assert not auth.authenticate(device["username"], other["password"])
    assert not auth.authenticate("not a device id!", "x")
    own = f"edgefleet/v1/d/{device['id']}"
    assert auth.may_publish(device["id"], f"{own}/heartbeat")
    assert auth.may_subscribe(device["id"], f"{own}/#")
    assert not auth.may_publish(device["id"], f"edgefleet/v1/d/{other['id']}/heartbeat")
    assert not auth.may_subscribe(device["id"], "edgefleet/v1/#")


def test_decommissioned_device_loses_everything(env: Env) -> None:
    auth = _auth(env)
    device = _enroll(env)
    own = f"edgefleet/v1/d/{device['id']}"
    rv = env.client.post(f"/api/v1/devices/{device['id']}/decommission",
                         headers=env.auth(Role.OPERATOR), json={})
    assert rv.status_code == 200, rv.json
    assert not auth.authenticate(device["username"], device["password"])
    assert not auth.may_publish(device["id"], f"{own}/heartbeat")
    assert not auth.may_subscribe(device["id"], f"{own}/#")
