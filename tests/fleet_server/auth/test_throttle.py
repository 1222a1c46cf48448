"""Login throttling: pure counting over an injected clock, and the login route's 429."""

from __future__ import annotations

from pathlib import Path

from edgefleet.fleet_server.auth.throttle import LoginThrottle
from tests.fleet_server.support import PASSWORD, make_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_blocks_after_max_failures_until_window_passes() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, 60.0, clock)
    for _ in range(3):
        assert throttle.retry_after_s("Alice") == 0
        throttle.failure("alice")
    assert throttle.retry_after_s("ALICE") == 60.0
    assert throttle.retry_after_s("bob") == 0
    clock.now += 59
    assert 0 < throttle.retry_after_s("alice") <= 1
    clock.now += 1
    assert throttle.retry_after_s("alice") == 0


def test_success_forgets_failures() -> None:
    throttle = LoginThrottle(2, 60.0, Clock())
    throttle.failure("carol")
    throttle.success("carol")
    throttle.failure("carol")
    assert throttle.retry_after_s("carol") == 0


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
