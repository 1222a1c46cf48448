"""A small run of the throughput measurement (numbers are printed by the module's CLI;
no timing assertions): every QoS 1 message of 20 simulated devices is committed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.fleet_server.ingest.throughput import measure


def test_simulated_devices_lose_nothing(mosquitto: Any, tmp_path: Path) -> None:
    result = measure(mosquitto.host, mosquitto.port, tmp_path / "data", devices=20,
                     per_device=20)
    assert result.lost == 0
    assert result.messages == 400
