"""scrypt password hashes and generated secrets."""

from __future__ import annotations

import pytest

from edgefleet.fleet_server.auth.passwords import (
    WeakPasswordError,
    check_password_strength,
    generate_password,
    hash_password,
    sha256_hex,
    verify_password,
)


def test_hash_verifies_and_is_salted() -> None:
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$")
    assert verify_password("correct horse", a)
    assert not verify_password("correct horsE", a)


@pytest.mark.parametrize("encoded", ["", "md5$x", "scrypt$1$2$3$zz$yy", "scrypt$a$b$c$d$e"])
def test_malformed_hashes_never_verify(encoded: str) -> None:
    assert not verify_password("anything", encoded)


def test_strength_rules() -> None:
    check_password_strength("x" * 12)
    for bad in ("short", "x" * 1025):
        with pytest.raises(WeakPasswordError):
            check_password_strength(bad)


def test_generated_secrets_are_unique_and_long() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50 and all(len(p) >= 20 for p in passwords)
    assert sha256_hex("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
