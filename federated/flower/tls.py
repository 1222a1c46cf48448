"""TLS material for a SuperLink and SuperNode authentication keys.

* :func:`make_tls_files`: a private CA and a server certificate for the SuperLink (SANs:
  the loopback address and ``localhost``), for ``--ssl-*`` on the SuperLink and
  ``--root-certificates`` on SuperNodes and the Control API client;
  :func:`ensure_tls_files` keeps using them across restarts until the server certificate
  is close to expiry (devices keep trusting the same CA).
* :func:`make_node_key`: a SuperNode's EC key pair (NIST P-384), private key in OpenSSH
  format (what ``flower-supernode --auth-supernode-private-key`` loads), public key as PEM
  SubjectPublicKeyInfo (what the Control API's ``RegisterNode`` takes).

Flower 1.41 refuses SuperNode authentication without TLS, so auth implies TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a SuperLink's TLS setup."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair."""

    private_key: Path  # OpenSSH format
    public_key_pem: bytes  # PEM SubjectPublicKeyInfo


def make_tls_files(directory: Path, *, host: str = "127.0.0.1", days: int = 30) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet federated CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        files.server_key,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return files


def ensure_tls_files(directory: Path, *, host: str = "127.0.0.1", days: int = 365,
                     renew_within_days: int = 30) -> TlsFiles:
    """The TLS files in ``directory`` if they are complete and the server certificate is
    valid for more than ``renew_within_days``; else new ones (:func:`make_tls_files`)."""
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        usable = files.ca_cert.is_file() and files.server_key.is_file() and (
            cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
            > dt.timedelta(days=renew_within_days))
    except (OSError, ValueError):
        usable = False
    return files if usable else make_tls_files(directory, host=host, days=days)


def make_node_key(path: Path) -> NodeKey:
    """Generate a SuperNode key; the private key goes to ``path`` (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return NodeKey(private_key=path, public_key_pem=public)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
