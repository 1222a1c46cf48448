"""Mosquitto 2.x configuration for the edgefleet broker policy.

An external Mosquitto enforces the same rule as the embedded broker (see :mod:`.acl`
and docs/broker.md) with three generated files:

* ``mosquitto.conf``: one listener, ``allow_anonymous false``, ``per_listener_settings
  false`` (the password and ACL files apply to every listener), ``max_queued_messages 0``,
  ``max_inflight_messages`` :data:`MAX_INFLIGHT`;
* ``edgefleet.passwd``: ``username:$7$...`` lines (PBKDF2-SHA512, Mosquitto's own format),
  the service user and one line per device;
* ``edgefleet.acl``: the service user may read/write ``edgefleet/v1/#``; every other user
  (a device, username = device id) ``edgefleet/v1/d/%u/#`` only.

:func:`mosquitto_hash`, :func:`render_acl` and :func:`render_password_file` are pure;
:func:`write_mosquitto_config` writes the three files (mode 0600, each replaced
atomically so a broker reloading on SIGHUP never reads half a file).

Why ``%u`` is safe here: Mosquitto substitutes the username verbatim. It refuses every
pattern ACL to a username or client id containing ``+`` or ``#`` (its own guard), but not
``/``: a username ``dev-a/x`` would own ``edgefleet/v1/d/dev-a/x/#`` inside ``dev-a``'s
subtree. Device ids are therefore checked with :func:`.acl.validate_device_id` (one
topic level from ``[A-Za-z0-9._-]``) before they reach the password file, so no such
user can ever log in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.fleet_server.broker import acl
from edgefleet.fleet_server.broker.errors import BrokerError

# Mosquitto 2.x (src/password_mosq.c, apps/mosquitto_passwd): "$7$" = PBKDF2-HMAC-SHA512,
# 12-byte salt, 64-byte digest, both standard base64 with padding; mosquitto_passwd's
# default is 101 iterations. Verified against mosquitto_passwd 2.0.11 in the tests.
HASH_ID = "7"
DEFAULT_ITERATIONS = 101
SALT_BYTES = 12
DIGEST_BYTES = 64

MAX_INFLIGHT = 1000  # QoS 1 messages in flight to one client (Mosquitto's default: 20)
CONF_FILENAME = "mosquitto.conf"
PASSWORD_FILENAME = "edgefleet.passwd"  # noqa: S105 - a file name, not a secret
ACL_FILENAME = "edgefleet.acl"

_B64 = r"[A-Za-z0-9+/]+={0,2}"
_HASH_RE = re.compile(
    rf"\$7\$(?P<iterations>[1-9][0-9]{{0,9}})\$(?P<salt>{_B64})\$(?P<digest>{_B64})")
# A username Mosquitto's files can carry safely: no ':' (the password file separator),
# no whitespace or control characters (line and token separators), no '+', '#', '/'
# (topic syntax, see the module docstring), not starting with '$'.
_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


class MosquittoConfigError(BrokerError):
    """A username, password hash or setting cannot be written into Mosquitto's files."""


@dataclass(frozen=True)
class MosquittoFiles:
    """Where :func:`write_mosquitto_config` put the three files."""

    conf: Path
    password_file: Path
    acl_file: Path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mosquitto_hash(password: str, *, iterations: int = DEFAULT_ITERATIONS,
                   salt: bytes | None = None) -> str:
    """The Mosquitto 2.x password-file hash of ``password``:
    ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>``.

    ``salt`` defaults to 12 fresh random bytes (as ``mosquitto_passwd``); pass one only
    for reproducible tests. Device broker passwords carry 256 random bits, so the low
    default iteration count (Mosquitto's own) costs nothing in security.

    Raises:
        MosquittoConfigError: ``iterations`` < 1, an empty salt, or an empty password.
    """
    if iterations < 1:
        raise MosquittoConfigError(f"iterations must be >= 1, not {iterations}")
    if not password:
        raise MosquittoConfigError("refusing to hash an empty password")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if not salt:
        raise MosquittoConfigError("the salt must not be empty")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"${HASH_ID}${iterations}${_b64(salt)}${_b64(digest)}"


def _parse_hash(stored: str) -> tuple[int, bytes, bytes] | None:
    match = _HASH_RE.fullmatch(stored)
    if match is None:
        return None
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        digest = base64.b64decode(match["digest"], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not salt or len(digest) != DIGEST_BYTES:
        return None
    return int(match["iterations"]), salt, digest


def is_mosquitto_hash(stored: str) -> bool:
    """Whether ``stored`` is a well-formed ``$7$`` hash (what the password file accepts)."""
    return _parse_hash(stored) is not None


def mosquitto_hash_matches(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``$7$`` hash ``stored`` (constant-time compare);
    False for a malformed hash."""
    parsed = _parse_hash(stored)
    if parsed is None:
        return False
    iterations, salt, digest = parsed
    candidate = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(candidate, digest)


def validate_username(username: str) -> str:
    """Return ``username`` if Mosquitto's password and ACL files can carry it safely.

    Raises:
        MosquittoConfigError: empty, longer than 128 characters, or containing anything
            outside ``[A-Za-z0-9._@-]`` (notably ``:``, whitespace, ``+``, ``#``, ``/``).
    """
    if _USERNAME_RE.fullmatch(username) is None:
        raise MosquittoConfigError(
            f"invalid broker username {username!r}: use 1-128 characters from "
            "[A-Za-z0-9._@-], starting with a letter or digit")
    return username


def render_acl(service_user: str) -> str:
    """The ACL file: ``service_user`` may use ``edgefleet/v1/#``; every other user only
    ``edgefleet/v1/d/<username>/#`` (a ``pattern`` rule, which applies to all users).

    Mosquitto 2.0's default ACL grants every SUBSCRIBE and checks *read* access per
    message at delivery, so a device subscribed to another device's filter simply never
    receives anything (the embedded broker refuses the SUBACK instead).

    Raises:
        MosquittoConfigError: invalid ``service_user``.
    """
    validate_username(service_user)
    return "\n".join([
        "# Generated by `edgefleet server mosquitto-config`; do not edit (regenerated).",
        "",
        "# Every user not listed below is a device (username = device id): its own",
        "# subtree only. Mosquitto refuses pattern rules to usernames or client ids",
        "# containing '+' or '#'; device ids never contain them, nor '/'.",
        f"pattern readwrite {acl.DEVICE_PREFIX}/%u/#",
        "",
        "# The fleet server's service user: the whole edgefleet tree.",
        f"user {service_user}",
        f"topic readwrite {acl.TOPIC_ROOT}/#",
        "",
    ])


def render_password_file(entries: Iterable[tuple[str, str]]) -> str:
    """The password file for ``(username, mosquitto_hash)`` pairs, one ``user:hash`` line
    each, in the given order.

    Raises:
        MosquittoConfigError: an invalid username, a hash that is not a ``$7$`` hash
            (e.g. a plain password or the devices table's ``sha256:`` form), or a
            username listed twice.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for username, stored in entries:
        validate_username(username)
        if username in seen:
            raise MosquittoConfigError(f"broker username {username!r} is listed twice")
        if not is_mosquitto_hash(stored):
            raise MosquittoConfigError(
                f"the password of {username!r} is not a Mosquitto $7$ hash "
                "(use mosquitto_hash())")
        seen.add(username)
        lines.append(f"{username}:{stored}\n")
    return "".join(lines)


def render_conf(listener_port: int, password_file: Path, acl_file: Path, *,
                bind_address: str | None = None, persistence_dir: Path | None = None,
                log_file: Path | None = None, pid_file: Path | None = None,
                run_as_user: str | None = None) -> str:
    """``mosquitto.conf`` for one plain-TCP listener with password and ACL files.

    ``bind_address`` None listens on every interface. Without ``persistence_dir``
    retained messages and sessions live in memory only. ``run_as_user`` writes Mosquitto's
    ``user`` setting: started as root, Mosquitto switches to that user (default
    ``mosquitto``) *before* reading the password and ACL files, so that user must own
    them.

    Raises:
        MosquittoConfigError: a port outside 1-65535 or a value with a line break.
    """
    if not 1 <= listener_port <= 65535:
        raise MosquittoConfigError(f"listener port {listener_port} is outside 1-65535")
    values = [str(p) for p in (password_file, acl_file, persistence_dir, log_file, pid_file)
              if p is not None] + [v for v in (bind_address, run_as_user) if v]
    if any(ch in value for value in values for ch in "\r\n\x00"):
        raise MosquittoConfigError("a Mosquitto setting must not contain a line break")
    listener = f"listener {listener_port}" + (f" {bind_address}" if bind_address else "")
    lines = [
        "# Generated by `edgefleet server mosquitto-config`; do not edit (regenerated).",
        "# Reload after regenerating: kill -HUP <mosquitto pid> (re-reads both files).",
        "",
        "# One set of security settings for every listener.",
        "per_listener_settings false",
        listener,
        "",
        "# Nobody is anonymous: the service user and devices log in from the password file.",
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        "",
        "# No per-client queue limit: with Mosquitto's default (1000) QoS 1 messages for a",
        "# slow or offline subscriber (the fleet server) are dropped silently.",
        "max_queued_messages 0",
        "# QoS 1 messages in flight to one client before its PUBACKs (default 20): the fleet",
        "# server acks after its database commit, so 20 capped ingestion near 2k msg/s.",
        f"max_inflight_messages {MAX_INFLIGHT}",
        "",
    ]
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {persistence_dir}/", ""]
    else:
        lines += ["persistence false", ""]
    if log_file is not None:
        lines += [f"log_dest file {log_file}", ""]
    if pid_file is not None:
        lines += [f"pid_file {pid_file}", ""]
    if run_as_user:
        lines += [f"user {run_as_user}", ""]
    return "\n".join(lines)


def _write_private_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a 0600 temp file in the same directory, fsynced,
    then renamed over the old one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_mosquitto_config(directory: Path, listener_port: int, service_user: str,
                           password_entries: Iterable[tuple[str, str]], *,
                           bind_address: str | None = None,
                           persistence_dir: Path | None = None,
                           log_file: Path | None = None,
                           pid_file: Path | None = None,
                           run_as_user: str | None = None) -> MosquittoFiles:
    """Write ``mosquitto.conf``, ``edgefleet.passwd`` and ``edgefleet.acl`` into
    ``directory`` (created if missing), each mode 0600 and replaced atomically.

    ``password_entries`` are ``(username, mosquitto_hash)`` pairs and must include
    ``service_user``. Every file is rendered before any is written, so an invalid entry
    leaves the previous files untouched. The files belong to the calling user: Mosquitto
    must run as that user (``run_as_user``, see :func:`render_conf`) or they must be
    chowned to the user it runs as.

    Raises:
        MosquittoConfigError: invalid entries or settings, or ``service_user`` missing
            from ``password_entries``.
        OSError: the directory or a file cannot be written.
    """
    directory = Path(directory).resolve()
    entries = list(password_entries)
    if service_user not in {user for user, _ in entries}:
        raise MosquittoConfigError(
            f"the service user {service_user!r} has no password entry; the fleet server "
            "could not log in")
    files = MosquittoFiles(conf=directory / CONF_FILENAME,
                           password_file=directory / PASSWORD_FILENAME,
                           acl_file=directory / ACL_FILENAME)
    rendered = {
        files.password_file: render_password_file(entries),
        files.acl_file: render_acl(service_user),
        files.conf: render_conf(listener_port, files.password_file, files.acl_file,
                                bind_address=bind_address, persistence_dir=persistence_dir,
                                log_file=log_file, pid_file=pid_file,
                                run_as_user=run_as_user),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in rendered.items():
        _write_private_atomic(path, text)
    return files


def hash_password_entries(service_user: str, service_password: str,
                          device_passwords: Iterable[tuple[str, str]], *,
                          iterations: int = DEFAULT_ITERATIONS) -> list[tuple[str, str]]:
    """``(username, mosquitto_hash)`` pairs for the service user followed by each device,
    from plaintext passwords (for operators who provision devices outside the server).

    Raises:
        MosquittoConfigError: an invalid device id or service user, a device named like
            the service user, a device listed twice, or an empty password.
    """
    entries = [(validate_username(service_user),
                mosquitto_hash(service_password, iterations=iterations))]
    seen = {service_user}
    for device_id, password in device_passwords:
        if not acl.is_valid_device_id(device_id):
            raise MosquittoConfigError(
                f"invalid device id {device_id!r}: use 1-64 characters from "
                "[A-Za-z0-9._-], starting with a letter or digit")
        if device_id in seen:
            raise MosquittoConfigError(
                f"device id {device_id!r} is listed twice or is the service user")
        if not password:
            raise MosquittoConfigError(f"device {device_id!r} has an empty password")
        seen.add(device_id)
        entries.append((device_id, mosquitto_hash(password, iterations=iterations)))
    return entries
