"""Join the fleet server's federation: register this device's SuperNode key, learn where
the SuperLink is.

``join_federation`` posts the node's public key (EC P-384 PEM) to the fleet server with a
request signed by the device's enrollment key (``edgefleet.agent.update.signing``, the
same signing the update reporter uses)::

    POST <server_url>/api/v1/device/fl-node   {"public_key": "<PEM>"}

The answer (``node_id``, ``superlink`` ``HOST:PORT``, ``ca_cert`` PEM) is checked and kept
in ``work_dir``: ``superlink-ca.pem`` and ``join.json`` (both 0600, written atomically).
The server registers the same key idempotently, so the agent joins again before every
SuperNode start: a server restart changes the SuperLink's address and CA.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from edgefleet.agent.federated.errors import JoinError
from edgefleet.agent.update.signing import SigningError, load_device_key, sign_request
from edgefleet.agent.update.state import atomic_write_bytes

logger = logging.getLogger(__name__)

JOIN_PATH = "/device/fl-node"
API_PREFIX = "/api/v1"
CA_FILE = "superlink-ca.pem"
JOIN_FILE = "join.json"
MAX_ANSWER_BYTES = 64 * 1024
# The first registration starts the server's SuperLink; measured > 15 s under load.
JOIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class JoinInfo:
    """What the SuperNode needs, as the fleet server answered."""

    node_id: int
    superlink: str  # HOST:PORT of the SuperLink's Fleet API (TLS)
    ca_cert: Path  # the stored CA certificate PEM


def join_federation(state_dir: Path, public_key_pem: bytes, work_dir: Path, *,
                    timeout_s: float = JOIN_TIMEOUT_S) -> JoinInfo:
    """Register ``public_key_pem`` for this enrolled device; the join information.

    The first registration makes the fleet server start its SuperLink, which takes
    seconds (10 s and more on a busy small machine): hence the generous ``timeout_s``.

    Raises:
        JoinError: not enrolled, the device key is unusable, the server is unreachable,
            refused the request or gave an unusable answer.
    """
    from edgefleet.agent.enroll import EnrollmentError, load_enrollment

    try:
        enrollment = load_enrollment(state_dir)
        key = load_device_key(state_dir / str(enrollment.get("key_file") or
                                              "device_key.pem"))
    except (EnrollmentError, SigningError) as e:
        raise JoinError(f"cannot join the federation: {e}") from e
    server_url = enrollment.get("server_url")
    if not isinstance(server_url, str) or not server_url:
        raise JoinError("cannot join the federation: enrollment.json has no server_url")
    url = _api_url(server_url) + JOIN_PATH
    body = json.dumps({"public_key": public_key_pem.decode("ascii")}).encode()
    headers = {"Content-Type": "application/json",
               **sign_request(key, str(enrollment["device_id"]), "POST", url, body)}
    request = urllib.request.Request(url, data=body, headers=headers,  # noqa: S310
                                     method="POST")  # http(s) only: _api_url
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            raw = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise JoinError(f"the fleet server refused to register the SuperNode key: HTTP "
                        f"{e.code} {_error_message(e)}") from e
    except TimeoutError as e:  # it answers, slowly: it may be starting its SuperLink
        raise JoinError(f"the fleet server at {server_url} did not answer the SuperNode key "
                        f"registration within {timeout_s:.0f} s") from e
    except (urllib.error.URLError, OSError) as e:
        if isinstance(getattr(e, "reason", None), TimeoutError):
            raise JoinError(f"the fleet server at {server_url} did not answer the SuperNode "
                            f"key registration within {timeout_s:.0f} s") from e
        raise JoinError(f"the fleet server at {server_url} is unreachable: {e}") from e
    info = _parse_answer(raw)
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_path = work_dir / CA_FILE
    atomic_write_bytes(ca_path, info["ca_cert"].encode(), mode=0o600)
    joined = JoinInfo(info["node_id"], info["superlink"], ca_path)
    atomic_write_bytes(work_dir / JOIN_FILE, json.dumps(
        {"node_id": joined.node_id, "superlink": joined.superlink}).encode(), mode=0o600)
    logger.info("joined the federation as node %s (SuperLink %s)", joined.node_id,
                joined.superlink)
    return joined


def _api_url(server_url: str) -> str:
    parsed = urllib.parse.urlsplit(server_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise JoinError(f"cannot join the federation: server_url {server_url!r} is not "
                        "http(s)://host[:port]")
    api = server_url.rstrip("/")
    return api if api.endswith(API_PREFIX) else api + API_PREFIX


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read(4096))["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError, OSError):
        return str(e.reason)


def _parse_answer(raw: bytes) -> dict[str, Any]:
    """The checked answer: ``node_id`` int, ``superlink`` HOST:PORT, ``ca_cert`` one PEM
    certificate."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise JoinError("the fleet server's join answer is too large")
    try:
        answer = json.loads(raw)
    except ValueError as e:
        raise JoinError("the fleet server's join answer is not JSON") from e
    if not isinstance(answer, dict):
        raise JoinError("the fleet server's join answer is not an object")
    node_id, superlink, ca_cert = (answer.get("node_id"), answer.get("superlink"),
                                   answer.get("ca_cert"))
    if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id < 0:
        raise JoinError(f"the fleet server's join answer has no node_id: {node_id!r}")
    host, sep, port = superlink.rpartition(":") if isinstance(superlink, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JoinError(f"the fleet server's join answer has no SuperLink HOST:PORT: "
                        f"{superlink!r}")
    if not isinstance(ca_cert, str):
        raise JoinError("the fleet server's join answer has no ca_cert")
    try:
        x509.load_pem_x509_certificate(ca_cert.encode("ascii"))
    except (ValueError, UnicodeError) as e:
        raise JoinError("the fleet server's ca_cert is not a PEM certificate") from e
    return {"node_id": node_id, "superlink": superlink, "ca_cert": ca_cert}
