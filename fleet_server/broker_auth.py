"""The fleet server's :class:`BrokerAuth`: who may connect to the broker, and where.

* The server's own service account (``broker_accounts`` table, created by ``server init``;
  the plaintext is only in the data dir's secrets file) may use ``edgefleet/v1/#``.
* A device connects with username = its device id and the broker password it received
  at enrollment; the devices feature verifies it (False for unknown or decommissioned
  devices). It may only use ``edgefleet/v1/d/{device_id}/#``, and only while active, so a
  decommissioned device's live connection can no longer publish or receive.

Topic rules are the pure functions of :mod:`edgefleet.fleet_server.broker.acl`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from typing import Protocol

from edgefleet.fleet_server.auth.passwords import verify_password
from edgefleet.fleet_server.broker import acl
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)


class DeviceCredentials(Protocol):
    """What broker authentication needs from the devices feature."""

    def verify_broker_password(self, device_id: str, password: str) -> bool:
        """True only for an active device whose broker password matches."""
        ...

    def is_active(self, device_id: str) -> bool:
        """Whether ``device_id`` is enrolled and not decommissioned."""
        ...


class ServerBrokerAuth:
    """BrokerAuth over the server database (thread-safe; never raises)."""

    def __init__(self, store: Store, devices: DeviceCredentials, service_user: str) -> None:
        self._store = store
        self._devices = devices
        self._service_user = service_user
        # sha256 of the last service password that verified: scrypt once, not per connect.
        self._service_ok: bytes | None = None
        self._lock = threading.Lock()

    def _service_password_ok(self, password: str) -> bool:
        digest = hashlib.sha256(password.encode()).digest()
        with self._lock:
            if self._service_ok is not None and hmac.compare_digest(digest, self._service_ok):
                return True
        rows = list(self._store.db.table("broker_accounts").rows_where(
            "username = ?", [self._service_user]))
        if not rows or not verify_password(password, rows[0]["password_hash"]):
            return False
        with self._lock:
            self._service_ok = digest
        return True

    def authenticate(self, username: str, password: str) -> bool:
        """True for the service account or an active device with its own password."""
        try:
            if not username or not password:
                return False
            if username == self._service_user:
                ok = self._service_password_ok(password)
            elif acl.is_valid_device_id(username):
                ok = self._devices.verify_broker_password(username, password)
            else:
                ok = False
        except Exception:  # a broker callback must never raise
            log.exception("broker authentication failed for %s", username)
            return False
        if not ok:
            log.info("broker login refused for %s", username)
        return ok

    def _device_active(self, username: str) -> bool:
        if username == self._service_user:
            return True
        try:
            return self._devices.is_active(username)
        except Exception:
            log.exception("device status lookup failed for %s", username)
            return False

    def may_publish(self, username: str, topic: str) -> bool:
        """ACL check plus: a decommissioned device may not publish any more."""
        return (acl.may_publish(username, topic, server_user=self._service_user)
                and self._device_active(username))

    def may_subscribe(self, username: str, topic: str) -> bool:
        """ACL check plus: a decommissioned device receives nothing any more."""
        return (acl.may_subscribe(username, topic, server_user=self._service_user)
                and self._device_active(username))
