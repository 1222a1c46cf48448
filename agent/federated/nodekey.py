"""The SuperNode's authentication key: EC P-384, private key in OpenSSH format.

That is what ``flower-supernode --auth-supernode-private-key`` loads (Ed25519 is not);
the public key (PEM SubjectPublicKeyInfo) is what the SuperLink's Control API
``RegisterNode`` takes (``edgefleet.federated.flower.control.ControlClient.register_node``).
The key is generated on first start (mode 0600) and kept; the public key is also written
next to it (``<key>.pub.pem``) for whoever registers the device.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.agent.federated.errors import NodeKeyError
from edgefleet.federated.flower.tls import NodeKey, make_node_key

logger = logging.getLogger(__name__)


def public_key_path(private_key: Path) -> Path:
    """Where the public key PEM of ``private_key`` is written."""
    return private_key.with_name(private_key.name + ".pub.pem")


def ensure_node_key(path: Path) -> NodeKey:
    """Load the key at ``path``, or generate it (0600) when missing.

    Raises:
        NodeKeyError: the file exists but is not an OpenSSH EC P-384 private key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = make_node_key(path)
        logger.info("generated the SuperNode key %s", path)
    else:
        key = _load(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            logger.warning("SuperNode key %s had mode %o; setting 0600", path, mode)
            os.chmod(path, 0o600)
    pub = public_key_path(path)
    if not pub.exists() or pub.read_bytes() != key.public_key_pem:
        pub.write_bytes(key.public_key_pem)
    return key


def _load(path: Path) -> NodeKey:
    try:
        private = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise NodeKeyError(f"cannot load the SuperNode key {path}: {e}") from e
    if not isinstance(private, ec.EllipticCurvePrivateKey) \
            or not isinstance(private.curve, ec.SECP384R1):
        raise NodeKeyError(f"{path}: the SuperNode key must be EC P-384 (what Flower "
                           f"1.41 accepts), got {type(private).__name__}")
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return NodeKey(private_key=path, public_key_pem=public)
