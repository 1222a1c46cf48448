"""Random secrets and their stored form, plus device public-key parsing. Pure.

Enrollment tokens and broker passwords are 256-bit random values, so a single sha256 is
a sufficient stored form (no password stretching needed, unlike human passwords), and
checking one is fast enough for every broker CONNECT. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.fleet_server.devices.errors import InvalidRequestError

TOKEN_PREFIX = "eft_"  # noqa: S105 - a label, not a secret


def new_secret(prefix: str = "") -> str:
    """A fresh URL-safe random secret with 256 bits of entropy."""
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The stored form of a random secret: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def secret_matches(secret: str, stored: str | None) -> bool:
    """Whether ``secret`` hashes to ``stored`` (False when nothing is stored)."""
    if not stored:
        return False
    return hmac.compare_digest(hash_secret(secret), stored)


def new_device_id() -> str:
    """A device id: safe as an MQTT username and topic level (no ``+ # /``)."""
    return "dev-" + secrets.token_hex(8)


def normalize_public_key(text: str) -> tuple[str, str]:
    """Parse an Ed25519 public key (PEM, or raw 32 bytes in base64) into PEM + fingerprint.

    Returns ``(pem, fingerprint)`` where the fingerprint is ``sha256:<hex>`` of the raw key.

    Raises:
        InvalidRequestError: not an Ed25519 public key.
    """
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            raw = base64.b64decode(text, validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError, binascii.Error, UnicodeError, UnsupportedAlgorithm) as e:
        raise InvalidRequestError(f"public_key is not a valid Ed25519 key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidRequestError("public_key must be an Ed25519 key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    return pem, "sha256:" + hashlib.sha256(raw).hexdigest()
