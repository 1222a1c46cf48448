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
        capture_output=True, text=True, timeout=280, check=False,
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
        "Demo finished",
    ]:
        assert expected in out, f"missing {expected!r} in demo output:\n{out[-4000:]}"
    # The admin's one-time password is never shown by the demo.
    assert "******** (hidden in the demo)" in out
    # The work folder holds what a user would look at afterwards.
    assert (tmp_path / "models" / "digits.int8.onnx").is_file()
    assert (tmp_path / "device-1" / "enrollment.json").stat().st_mode & 0o077 == 0
