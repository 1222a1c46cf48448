"""Login throttling: pure counting over an injected clock, and the login route's 429.

Failures count per (client address, username) and, more loosely, per client address, so
nobody can lock another client out of an account by guessing its password badly.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.fleet_server.auth.throttle import LoginThrottle, client_key
from tests.fleet_server.support import PASSWORD, make_env

A, B = "192.0.2.1", "198.51.100.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_blocks_after_max_failures_until_window_passes() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, 60.0, clock)
    for _ in range(3):
        assert throttle.retry_after_s(A, "Alice") == 0
        throttle.failure(A, "alice")
    assert throttle.retry_after_s(A, "ALICE") == 60.0
    assert throttle.retry_after_s(A, "bob") == 0
    clock.now += 59
    assert 0 < throttle.retry_after_s(A, "alice") <= 1
    clock.now += 1
    assert throttle.retry_after_s(A, "alice") == 0


def test_success_forgets_failures() -> None:
    throttle = LoginThrottle(2, 60.0, Clock())
    throttle.failure(A, "carol")
    throttle.success(A, "carol")
    throttle.failure(A, "carol")
    assert throttle.retry_after_s(A, "carol") == 0


def test_failures_from_one_address_do_not_lock_out_another() -> None:
    """S2: the throttle was keyed by username only: anyone could lock out the admin."""
    throttle = LoginThrottle(3, 60.0, Clock())
    for _ in range(3):
        throttle.failure(A, "admin")
    assert throttle.retry_after_s(A, "admin") > 0
    assert throttle.retry_after_s(B, "admin") == 0


def test_per_address_limit_spans_usernames_and_success_does_not_reset_it() -> None:
    throttle = LoginThrottle(3, 60.0, Clock(), max_failures_per_ip=5)
    for i in range(5):
        assert throttle.retry_after_s(A, f"user{i}") == 0
        throttle.failure(A, f"user{i}")
    throttle.success(A, "mallory")  # a valid login of the attacker's own account
    assert throttle.retry_after_s(A, "someone-else") == 60.0
    assert throttle.retry_after_s(B, "someone-else") == 0


def test_ipv6_addresses_count_per_slash_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1") == "192.0.2.1"
    assert client_key(None) == client_key("not an address") == "unknown"


def test_flooding_the_table_does_not_reset_a_blocked_client() -> None:
    """S2: failing logins for MAX_TRACKED names evicted (reset) every other counter."""
    clock = Clock()
    throttle = LoginThrottle(3, 60.0, clock, max_failures_per_ip=1000, max_tracked=50)
    for _ in range(3):
        throttle.failure(A, "admin")
    for i in range(500):  # many addresses, many names: far more keys than are tracked
        throttle.failure(f"10.0.{i // 250}.{i % 250}", f"name{i}")
        clock.now += 0.01
    assert throttle.retry_after_s(A, "admin") > 0
    assert throttle.tracked() <= 2 * 50


def test_login_route_answers_429_even_for_the_right_password(tmp_path: Path) -> None:
    env = make_env(tmp_path / "data", login_max_failures=3)
    try:
        for _ in range(3):
            rv = env.client.post("/api/v1/auth/login",
                                 json={"username": "viewer1", "password": "guess guess"})
            assert rv.status_code == 401
        rv = env.client.post("/api/v1/auth/login",
                             json={"username": "viewer1", "password": PASSWORD})
        assert rv.status_code == 429 and rv.json["error"]["code"] == "too_many_requests"
        other = env.client.post("/api/v1/auth/login",
                                json={"username": "operator1", "password": PASSWORD})
        assert other.status_code == 200
    finally:
        env.services.store.close()


def test_login_route_an_attacker_cannot_lock_out_the_admin(tmp_path: Path) -> None:
    """S2 through the route: bad logins from one address leave other addresses alone."""
    env = make_env(tmp_path / "data", login_max_failures=3, login_max_failures_per_ip=5)
    attacker = env.app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = A
    admin = env.app.test_client()
    admin.environ_base["REMOTE_ADDR"] = B
    try:
        for _ in range(3):
            rv = attacker.post("/api/v1/auth/login",
                               json={"username": "admin1", "password": "guess guess"})
            assert rv.status_code == 401
        assert attacker.post("/api/v1/auth/login", json={
            "username": "admin1", "password": PASSWORD}).status_code == 429
        assert admin.post("/api/v1/auth/login", json={
            "username": "admin1", "password": PASSWORD}).status_code == 200
        for name in ("viewer1", "operator1"):
            attacker.post("/api/v1/auth/login", json={"username": name, "password": "nope nope"})
        rv = attacker.post("/api/v1/auth/login",
                           json={"username": "viewer1", "password": PASSWORD})
        assert rv.status_code == 429  # the per-address limit (5) is reached
        assert admin.post("/api/v1/auth/login", json={
            "username": "viewer1", "password": PASSWORD}).status_code == 200
    finally:
        env.services.store.close()
