"""The SuperLink's TLS files survive restarts until the certificate nears expiry."""

from __future__ import annotations

from pathlib import Path

from edgefleet.federated.flower.tls import ensure_tls_files


def test_tls_files_are_reused_until_close_to_expiry(tmp_path: Path) -> None:
    first = ensure_tls_files(tmp_path / "tls")
    ca = first.ca_cert.read_bytes()
    again = ensure_tls_files(tmp_path / "tls")
    assert again == first and again.ca_cert.read_bytes() == ca
    assert oct(again.server_key.stat().st_mode & 0o777) == "0o600"
    renewed = ensure_tls_files(tmp_path / "tls", renew_within_days=400)  # > 1 year validity
    assert renewed.ca_cert.read_bytes() != ca


def test_broken_tls_files_are_replaced(tmp_path: Path) -> None:
    files = ensure_tls_files(tmp_path / "tls")
    files.server_cert.write_text("not a certificate")
    fixed = ensure_tls_files(tmp_path / "tls")
    assert fixed.server_cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    files.server_key.unlink()
    assert ensure_tls_files(tmp_path / "tls").server_key.is_file()
