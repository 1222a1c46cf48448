"""Shared test fixtures: real components started per session.

Nothing here skips: a missing component (the mosquitto binary, a runtime) is an error
that fails the run loudly, because a skip would hide a broken install.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The suite runs on two pytest-xdist workers on a 2-core machine next to real brokers,
# runtimes and Flower processes: example generation and single examples are sometimes
# slow for reasons that have nothing to do with the code under test. Properties still
# run every example; only the wall-clock health check and per-example deadline are off.
settings.register_profile("edgefleet", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edgefleet")

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/bin/mosquitto")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Turn every skip into a failure: a skipped test hides a missing component."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skips are failures in this suite (fix the cause): {report.longrepr}"


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port, or fail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


def find_mosquitto() -> str:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError(
        "the mosquitto broker binary is missing; run scripts/setup.sh "
        "(it installs the Debian package 'mosquitto')"
    )


@dataclass(frozen=True)
class BrokerEndpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEndpoint]:
    """A real Mosquitto on a free loopback port for the whole test session.

    ``max_queued_messages 0`` lifts the per-client queue limit: with the default, QoS 1
    messages to a slow subscriber are dropped and reliability tests would lie.
    """
    binary = find_mosquitto()
    workdir: Path = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                "max_queued_messages 0",
                "max_inflight_messages 1000",
                "persistence false",
                f"log_dest file {workdir / 'mosquitto.log'}",
                "",
            ]
        )
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
        raise RuntimeError(f"mosquitto did not start: {output}") from None
    yield BrokerEndpoint("127.0.0.1", port)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
