"""Device-authenticated HTTP requests: every request signed with the device's enrolled key.

The device signs, with the Ed25519 private key whose public half it enrolled, the UTF-8
bytes of::

    {METHOD}\\n{PATH}\\n{TIMESTAMP}\\n{NONCE}\\n{sha256 hex of the body}

(``PATH`` includes ``/api/v1`` and excludes the query string) and sends::

    X-Edgefleet-Device: <device_id>
    X-Edgefleet-Timestamp: <unix seconds, integer>
    X-Edgefleet-Nonce: <32 hex characters, fresh per request>
    X-Edgefleet-Signature: <base64 of the 64-byte Ed25519 signature>

The server accepts a request only if the device exists and is active, the timestamp is
within ``WINDOW_S`` of the server clock, the signature verifies against the enrolled key
and the nonce was not used by that device before (nonces are stored once the signature
verified, and pruned once their timestamp left the window, when a replay would be refused
as stale anyway). Every refusal is the same 401 ``device_auth_failed``; the reason is only
logged (INFO, never a secret).

``sign_request`` is the pure client half (the agent keeps its own copy).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask import current_app, g, request

from edgefleet.fleet_server.api.errors import ApiError
from edgefleet.fleet_server.audit import Actor, ActorKind
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DEVICE_HEADER = "X-Edgefleet-Device"
TIMESTAMP_HEADER = "X-Edgefleet-Timestamp"
NONCE_HEADER = "X-Edgefleet-Nonce"
SIGNATURE_HEADER = "X-Edgefleet-Signature"
WINDOW_S = 300
ERROR_CODE = "device_auth_failed"
_HEADERS = (DEVICE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)

_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_NONCE_RE = re.compile(r"^[0-9a-fA-F]{32}$")
_SIGNATURE_RE = re.compile(r"^[A-Za-z0-9+/]{86}==$")  # base64 of exactly 64 bytes

#: The four headers, as OpenAPI parameter objects (for ``route(..., params=...)``).
HEADER_PARAMS: list[dict[str, Any]] = [
    {"name": DEVICE_HEADER, "in": "header", "required": True,
     "schema": {"type": "string"}, "description": "The enrolled device id"},
    {"name": TIMESTAMP_HEADER, "in": "header", "required": True,
     "schema": {"type": "integer"},
     "description": f"Unix seconds; within {WINDOW_S} s of the server clock"},
    {"name": NONCE_HEADER, "in": "header", "required": True,
     "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
     "description": "Fresh per request; a reused nonce is refused"},
    {"name": SIGNATURE_HEADER, "in": "header", "required": True,
     "schema": {"type": "string"},
     "description": "base64 Ed25519 signature over METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\n"
                    "sha256-hex(body), with the device's enrolled key"},
]


def canonical_request(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The bytes a device signs for one request (pure)."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign_request(
    private_key: Ed25519PrivateKey,
    method: str,
    path: str,
    body: bytes,
    *,
    now: float,
    nonce: str,
    device_id: str | None = None,
) -> dict[str, str]:
    """The authentication headers of one request (pure: the caller supplies time and nonce).

    ``path`` is the request path including ``/api/v1``, without the query string; ``nonce``
    is 32 hex characters (``secrets.token_hex(16)``). With ``device_id`` the result also
    holds the ``X-Edgefleet-Device`` header.
    """
    timestamp = str(int(now))
    signature = private_key.sign(canonical_request(method, path, timestamp, nonce, body))
    headers = {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
    }
    if device_id is not None:
        headers = {DEVICE_HEADER: device_id, **headers}
    return headers


class DeviceAuthError(Exception):
    """A device request was refused; ``reason`` is for the log only, never the client."""

    def __init__(self, reason: str, device_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.device_id = device_id


@dataclass(frozen=True)
class _Headers:
    device_id: str
    timestamp: str
    nonce: str
    signature: bytes


def _parse_headers(headers: Mapping[str, str]) -> _Headers:
    device_id = headers.get(DEVICE_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    nonce = headers.get(NONCE_HEADER, "")
    signature = headers.get(SIGNATURE_HEADER, "")
    if not (device_id and timestamp and nonce and signature):
        raise DeviceAuthError("missing header", device_id[:128])
    if not _DEVICE_ID_RE.fullmatch(device_id):
        raise DeviceAuthError("malformed device id")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise DeviceAuthError("malformed timestamp", device_id)
    if not _NONCE_RE.fullmatch(nonce):
        raise DeviceAuthError("malformed nonce", device_id)
    if not _SIGNATURE_RE.fullmatch(signature):
        raise DeviceAuthError("malformed signature", device_id)
    try:
        raw = base64.b64decode(signature, validate=True)
    except binascii.Error as e:
        raise DeviceAuthError("malformed signature", device_id) from e
    return _Headers(device_id, timestamp, nonce, raw)


class DeviceAuthenticator:
    """Verifies signed device requests against the devices table; remembers used nonces."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time,
                 window_s: int = WINDOW_S) -> None:
        self._store = store
        self._clock = clock
        self._window_s = window_s

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
        """The id of the device that signed this request.

        Raises:
            DeviceAuthError: any check failed (see the module docstring).
        """
        parsed = _parse_headers(headers)
        device_id = parsed.device_id
        now = self._clock()
        if abs(now - int(parsed.timestamp)) > self._window_s:
            raise DeviceAuthError("timestamp outside the window", device_id)
        key = self._active_key(device_id)
        message = canonical_request(method, path, parsed.timestamp, parsed.nonce, body)
        try:
            key.verify(parsed.signature, message)
        except InvalidSignature as e:
            raise DeviceAuthError("bad signature", device_id) from e
        self._use_nonce(device_id, parsed.nonce.lower(), int(parsed.timestamp), now)
        return device_id

    def _active_key(self, device_id: str) -> Ed25519PublicKey:
        rows = list(self._store.db["devices"].rows_where(
            "id = ?", [device_id], select="status, public_key_pem"))
        if not rows:
            raise DeviceAuthError("unknown device", device_id)
        if rows[0]["status"] != "active":
            raise DeviceAuthError("device not active", device_id)
        try:
            key = serialization.load_pem_public_key(rows[0]["public_key_pem"].encode("ascii"))
        except (ValueError, TypeError, UnicodeError) as e:  # enrollment validated it
            raise DeviceAuthError("enrolled key unusable", device_id) from e
        if not isinstance(key, Ed25519PublicKey):
            raise DeviceAuthError("enrolled key is not Ed25519", device_id)
        return key

    def _use_nonce(self, device_id: str, nonce: str, timestamp: int, now: float) -> None:
        try:
            with self._store.transaction() as db:
                db.execute("DELETE FROM device_request_nonces WHERE ts < ?",
                           [int(now) - self._window_s - 1])
                db.execute("INSERT INTO device_request_nonces (device_id, nonce, ts)"
                           " VALUES (?, ?, ?)", [device_id, nonce, timestamp])
        except sqlite3.IntegrityError as e:
            raise DeviceAuthError("replayed nonce", device_id) from e


def device_authenticator(services: Services) -> DeviceAuthenticator:
    """The app's DeviceAuthenticator, kept in ``services.extras["updates.device_auth"]``."""
    existing = services.extras.get("updates.device_auth")
    if isinstance(existing, DeviceAuthenticator):
        return existing
    auth = DeviceAuthenticator(services.store)
    services.extras["updates.device_auth"] = auth
    return auth


def device_required(view: F) -> F:
    """Refuse the request with 401 ``device_auth_failed`` unless a device signed it.

    Use below ``route(..., role=None)`` (and without its ``request_schema``, so that the
    signature is checked before the body is parsed). Sets ``g.device_id`` and ``g.actor``
    (an ``ActorKind.DEVICE`` actor).
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        svc: Services = current_app.extensions["edgefleet"]
        body = request.get_data(cache=True)
        headers = {name: request.headers.get(name, "") for name in _HEADERS}
        try:
            device_id = device_authenticator(svc).verify(
                request.method, request.path, headers, body)
        except DeviceAuthError as e:
            log.info("device request refused: %s (device %r, %s %s)", e.reason,
                     e.device_id, request.method, request.path)
            raise ApiError(401, ERROR_CODE, "device authentication failed") from e
        g.device_id = device_id
        g.actor = Actor(ActorKind.DEVICE, device_id, device_id, "")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
