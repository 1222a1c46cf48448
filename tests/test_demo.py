"""The README's first command runs the demo; the demo must always work end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet.tools.cli", "demo", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=480, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-3000:]}\n{proc.stderr[-3000:]}"
    for expected in [
        "$ edgefleet model inspect",
        "$ edgefleet model quantize",
        "$ edgefleet model bench",
        "predicted [",
        "$ edgefleet server init",
        "$ edgefleet agent enroll",
        "refused (exit 1)",
        "with its password: Success",
        "with a wrong password: Not authorized",
        "$ edgefleet model promote digits 1.0.0 --to production",
        "$ edgefleet keys init",
        "$ edgefleet release publish",
        "switching -> committed [digits-1.1.0.tar]",
        ": committed (digits-1.1.0.tar)",
        # a fleet of agent daemons, their telemetry through the embedded broker
        "$ edgefleet model quantize",
        "$ edgefleet agent run --config",
        "): heartbeat over MQTT, serving digits 1.2.0",
        # a good release goes canary -> everyone
        "$ edgefleet rollout create --model digits --version 1.3.0",
        "digits 1.2.0 -> 1.3.0 [completed]",
        "advance",
        "scanner-3: serving digits 1.3.0",
        # shifted outputs: stopped at the canary by the output-drift gate, rolled back
        "--on-failure rollback",
        "digits 1.3.0 -> 1.4.0 [rolled_back]",
        "failed gate output_psi",
        "(the canary) is back on digits 1.3.0",
        "rollout.rollback",
        "scanner-3: exit code 0",
        "digits classified); 0 failed",
        "Demo finished",
    ]:
        assert expected in out, f"missing {expected!r} in demo output:\n{out[-4000:]}"
    # The admin's one-time password is never shown by the demo.
    assert "******** (hidden in the demo)" in out
    # The work folder holds what a user would look at afterwards.
    assert (tmp_path / "models" / "digits.int8.onnx").is_file()
    assert (tmp_path / "device-1" / "enrollment.json").stat().st_mode & 0o077 == 0
    assert (tmp_path / "scanner-1" / "agent.toml").is_file()
    # Every process the demo started is gone: each agent logged its clean shutdown.
    for i in (1, 2, 3):
        assert "stopping on SIGTERM" in (tmp_path / f"scanner-{i}" / "agent.log").read_text()
