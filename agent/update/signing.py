"""Device request signing: how the agent proves to the fleet server which device is calling.

Every device request carries four headers::

    X-Edgefleet-Device:    <device_id>
    X-Edgefleet-Timestamp: <unix seconds, integer>
    X-Edgefleet-Nonce:     <32 lowercase hex characters>
    X-Edgefleet-Signature: <base64 Ed25519 signature>

The signature is over the UTF-8 bytes of
``"{METHOD}\\n{PATH}\\n{TIMESTAMP}\\n{NONCE}\\n{sha256 hex of the body}"``, where PATH is
the URL path including ``/api/v1`` and without the query string. The key is the device's
Ed25519 key from enrollment (``device_key.pem``); the server knows its public key.

``sign_request`` builds the headers (pure, apart from the clock and random nonce, both
injectable); ``verify_request`` is the matching check, used by tests and usable by a server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

DEVICE_HEADER = "X-Edgefleet-Device"
TIMESTAMP_HEADER = "X-Edgefleet-Timestamp"
NONCE_HEADER = "X-Edgefleet-Nonce"
SIGNATURE_HEADER = "X-Edgefleet-Signature"
NONCE_HEX_CHARS = 32


class SigningError(Exception):
    """Base: a request could not be signed, or a signature does not verify."""


class DeviceKeyError(SigningError):
    """The device key file is missing, unreadable or not an Ed25519 private key."""


class BadSignatureError(SigningError):
    """A signed request is malformed, stale, or its signature does not verify."""


def request_path(url_or_path: str) -> str:
    """The PATH that is signed: the URL's path (``/api/v1/...``) without query or fragment."""
    path = urllib.parse.urlsplit(url_or_path).path
    return path or "/"


def canonical_message(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The exact bytes the device signs for one request."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign_request(
    key: Ed25519PrivateKey,
    device_id: str,
    method: str,
    url_or_path: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four authentication headers for one request (fresh nonce, current time)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    nonce = secrets.token_hex(NONCE_HEX_CHARS // 2) if nonce is None else nonce
    message = canonical_message(method, request_path(url_or_path), ts, nonce, body)
    return {
        DEVICE_HEADER: device_id,
        TIMESTAMP_HEADER: str(ts),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(key.sign(message)).decode("ascii"),
    }


def verify_request(
    public_key: Ed25519PublicKey,
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    max_skew_s: int = 300,
    now: float | None = None,
) -> str:
    """Check a signed request; return the device id it claims (the caller maps it to the key).

    ``headers`` must be case-insensitive if the transport's are (e.g. werkzeug's
    ``Headers``); a plain dict must use the canonical spelling above. Nonce replay is the
    server's job (it must remember nonces for ``max_skew_s``).

    Raises:
        BadSignatureError: a header is missing or malformed, the timestamp is further than
            ``max_skew_s`` from ``now``, or the signature does not verify.
    """
    values = {}
    for name in (DEVICE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
        value = headers.get(name)
        if not value:
            raise BadSignatureError(f"missing header {name}")
        values[name] = value
    device_id, raw_ts, nonce = (values[DEVICE_HEADER], values[TIMESTAMP_HEADER],
                                values[NONCE_HEADER])
    try:
        signature = base64.b64decode(values[SIGNATURE_HEADER], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadSignatureError("the signature is not base64") from e
    if not raw_ts.isdigit():
        raise BadSignatureError("the timestamp is not an integer")
    if len(nonce) != NONCE_HEX_CHARS or any(c not in "0123456789abcdef" for c in nonce):
        raise BadSignatureError(f"the nonce must be {NONCE_HEX_CHARS} lowercase hex characters")
    ts = int(raw_ts)
    current = time.time() if now is None else now
    if abs(current - ts) > max_skew_s:
        raise BadSignatureError(f"the timestamp is {current - ts:+.0f} s off")
    try:
        public_key.verify(signature, canonical_message(method, path, ts, nonce, body))
    except InvalidSignature as e:
        raise BadSignatureError("the signature does not verify") from e
    return device_id


def load_device_key(path: Path) -> Ed25519PrivateKey:
    """The device's private key from its PKCS#8 PEM file (written by enrollment).

    Raises:
        DeviceKeyError: the file is missing, unreadable, or not an Ed25519 private key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DeviceKeyError(f"cannot read the device key {path}: {e}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise DeviceKeyError(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise DeviceKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key
