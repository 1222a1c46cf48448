"""Enroll this device with a fleet server (``edgefleet agent enroll``).

The device generates its own Ed25519 key pair (the private key never leaves it), sends
the public key with a one-time enrollment token to ``POST /api/v1/enroll`` over plain
HTTP(S) (stdlib urllib: the agent extra has no requests), and stores what the server
returns in its state directory:

* ``device_key.pem``: the private key (PKCS#8 PEM), mode 0600;
* ``enrollment.json``: device id, server URL, broker URL and the device's own broker
  credentials, ``update_root`` (the update repositories' root metadata; null until the
  server has update repositories), mode 0600.

Both files are written atomically (temp file, fsync, rename, fsync of the directory).
An existing enrollment is never overwritten unless ``force=True``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import platform
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent import agent_version
from edgefleet.agent.update.state import atomic_write_bytes

log = logging.getLogger(__name__)

ENROLLMENT_FILE = "enrollment.json"
KEY_FILE = "device_key.pem"
ENROLL_PATH = "/api/v1/enroll"
STATE_DIR_ENV = "EDGEFLEET_STATE_DIR"
FORMAT_VERSION = 1
_MAX_RESPONSE_BYTES = 1 << 20


class EnrollmentError(Exception):
    """Base of every enrollment failure."""


class AlreadyEnrolledError(EnrollmentError):
    """The state directory already holds an enrollment (use force to replace it)."""


class EnrollmentRefusedError(EnrollmentError):
    """The server answered with an error (bad, used, expired or revoked token, ...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server refused enrollment ({status} {code}): {message}")
        self.status = status
        self.code = code


class ServerUnreachableError(EnrollmentError):
    """No HTTP answer from the server (DNS, refused connection, TLS, timeout)."""


class InvalidResponseError(EnrollmentError):
    """The server answered 2xx with something that is not a valid enrollment."""


class StateDirError(EnrollmentError):
    """The state directory cannot be created or written."""


@dataclass(frozen=True)
class EnrollmentResult:
    """What enrollment stored (``broker_password`` is kept out of ``repr``)."""

    device_id: str
    server_url: str
    broker_url: str
    broker_username: str
    broker_password: str = field(repr=False)
    group: str | None
    update_root: Any
    enrollment_path: Path
    key_path: Path


def default_state_dir() -> Path:
    """``$EDGEFLEET_STATE_DIR``, else /var/lib/edgefleet for root, else ~/.local/state/edgefleet."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/edgefleet")
    return Path.home() / ".local" / "state" / "edgefleet"


def atomic_write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temp file, fsync, rename, fsync dir."""
    atomic_write_bytes(path, data, mode=0o600)


def _hardware() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "agent_version": agent_version(),
        "cpu_count": os.cpu_count(),
    }


def _enroll_url(server_url: str) -> str:
    parsed = urllib.parse.urlsplit(server_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise EnrollmentError(f"server URL must be http(s)://host[:port], got {server_url!r}")
    return server_url.rstrip("/") + ENROLL_PATH


def _refusal(e: urllib.error.HTTPError) -> EnrollmentRefusedError:
    code, message = "http_error", e.reason or "error"
    try:
        body = json.loads(e.read(_MAX_RESPONSE_BYTES))
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError, OSError):
        pass
    return EnrollmentRefusedError(e.code, code, str(message))


def _post_json(url: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - http(s) URL of the configured fleet server
        url, data=json.dumps(payload).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "User-Agent": f"edgefleet-agent/{agent_version()}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) URL of the configured fleet server
            raw = response.read(_MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise _refusal(e) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerUnreachableError(f"cannot reach {url}: {reason}") from e
    if len(raw) > _MAX_RESPONSE_BYTES:
        raise InvalidResponseError("enrollment response is too large")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise InvalidResponseError("enrollment response is not JSON") from e
    if not isinstance(body, dict):
        raise InvalidResponseError("enrollment response is not a JSON object")
    return body


def _parse_response(body: dict[str, Any]) -> tuple[str, dict[str, str], str | None, Any]:
    try:
        device_id = body["device_id"]
        broker = body["broker"]
        creds = {k: broker[k] for k in ("url", "username", "password")}
    except (KeyError, TypeError) as e:
        raise InvalidResponseError(f"enrollment response lacks {e}") from e
    if not isinstance(device_id, str) or not device_id:
        raise InvalidResponseError("enrollment response has no device id")
    if not all(isinstance(v, str) and v for v in creds.values()):
        raise InvalidResponseError("enrollment response has incomplete broker credentials")
    group = body.get("group")
    return device_id, creds, group if isinstance(group, str) else None, body.get("update_root")


def _prepare_state_dir(state_dir: Path, force: bool) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StateDirError(f"cannot create state directory {state_dir}: {e}") from e
    if (state_dir / ENROLLMENT_FILE).exists() and not force:
        raise AlreadyEnrolledError(
            f"{state_dir / ENROLLMENT_FILE} exists: this device is already enrolled "
            "(use force / --force to enroll again with a new identity)"
        )
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StateDirError(f"state directory {state_dir} is not writable")


def enroll(
    server_url: str,
    token: str,
    state_dir: Path,
    *,
    force: bool = False,
    name: str | None = None,
    timeout_s: float = 30.0,
) -> EnrollmentResult:
    """Enroll this device and store its identity and credentials in ``state_dir``.

    Raises:
        AlreadyEnrolledError: ``state_dir`` already holds an enrollment and not ``force``.
        StateDirError: ``state_dir`` cannot be created or written (checked before the
            token is spent).
        ServerUnreachableError: no HTTP answer.
        EnrollmentRefusedError: the server refused (``status``/``code`` say why: 401
            unknown or forged token, 409 already used, 410 expired or revoked).
        InvalidResponseError: a 2xx answer that is not an enrollment.
        EnrollmentError: a malformed server URL or empty token.
    """
    state_dir = Path(state_dir)
    url = _enroll_url(server_url)
    if not token.strip():
        raise EnrollmentError("the enrollment token is empty")
    _prepare_state_dir(state_dir, force)

    key = Ed25519PrivateKey.generate()
    public_raw = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    hardware = _hardware()
    payload = {"token": token.strip(), "public_key": base64.b64encode(public_raw).decode(),
               "name": name or hardware["hostname"] or "device", "hardware": hardware}
    device_id, broker, group, update_root = _parse_response(
        _post_json(url, payload, timeout_s))

    key_path = state_dir / KEY_FILE
    enrollment_path = state_dir / ENROLLMENT_FILE
    try:
        atomic_write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        record = {
            "format": FORMAT_VERSION,
            "device_id": device_id,
            "server_url": server_url.rstrip("/"),
            "broker": broker,
            "group": group,
            "update_root": update_root,
            "key_file": KEY_FILE,
            "public_key_fingerprint": "sha256:" + hashlib.sha256(public_raw).hexdigest(),
            "enrolled_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        }
        atomic_write_private(enrollment_path,
                             (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    except OSError as e:
        raise StateDirError(f"enrolled as {device_id} but cannot store it in {state_dir}: {e}"
                            " (ask an operator to decommission it and enroll again)") from e
    log.info("enrolled as device %s with %s", device_id, server_url)
    return EnrollmentResult(
        device_id=device_id, server_url=server_url.rstrip("/"), broker_url=broker["url"],
        broker_username=broker["username"], broker_password=broker["password"], group=group,
        update_root=update_root, enrollment_path=enrollment_path, key_path=key_path,
    )


def load_enrollment(state_dir: Path) -> dict[str, Any]:
    """The stored ``enrollment.json`` of ``state_dir``.

    Raises:
        EnrollmentError: the device is not enrolled or the file is unreadable.
    """
    path = Path(state_dir) / ENROLLMENT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EnrollmentError(f"not enrolled: {path} does not exist") from e
    except (OSError, ValueError) as e:
        raise EnrollmentError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict) or "device_id" not in data:
        raise EnrollmentError(f"{path} is not an enrollment record")
    return data
