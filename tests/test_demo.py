"""The README's first command runs the demo; the demo must always work end to end."""

from __future__ import annotations

import json
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtime import load_model
from edgefleet.tools.modelgen.digits import NODE_CLASS_GROUPS

DEMO_TIMEOUT_S = 900  # ~3 min on an idle 2-core machine; far more when it is shared


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 300)
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.tools.cli", "demo", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Ctrl-C: the demo stops the agents, their SuperNodes, the server and its
        # SuperLink itself (killing it would leave them running).
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=240)
        pytest.fail(f"the demo did not finish in {DEMO_TIMEOUT_S} s:\n{stdout[-4000:]}")
    out = stdout
    assert proc.returncode == 0, f"{out[-3000:]}\n{stderr[-3000:]}"
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
        # a federated round on the running agents' own labelled feedback
        "--name digits --version 2.0.0 --metadata",
        "/v1/feedback, ",
        "(TLS, SuperNode authentication on)",
        "$ edgefleet fl run --model digits --base-version 2.0.0 --group scanners --rounds 2",
        "job 1: running/training",
        "job 1: succeeded",
        "$ edgefleet fl show 1",
        "parent digits@2.0.0",
        "lineage training_run: fljob:1",
        "$ GET /api/v1/models/digits/versions/2.0.0-fl1-int8/artifact",
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
    _federated_round_checks(tmp_path, out)
    # Every process the demo started is gone: each agent logged its clean shutdown.
    for i in (1, 2, 3):
        assert "stopping on SIGTERM" in (tmp_path / f"scanner-{i}" / "agent.log").read_text()


def _federated_round_checks(work: Path, out: str) -> None:
    """The round ran on >= 3 agent-driven SuperNodes, each on its own non-IID labelled
    feedback; the result beats the base on the held-out set and both registered artifacts
    (float and int8, downloaded from the registry by the demo) run in the agent runtime."""
    rounds = re.findall(r"round (\d)/2 aggregated: (\d+) nodes, 0 failed", out)
    assert [r for r, _ in rounds] == ["1", "2"], out[-4000:]
    assert all(int(n) >= 3 for _, n in rounds), rounds
    for i, classes in enumerate(NODE_CLASS_GROUPS, start=1):
        fed = work / f"scanner-{i}" / "state" / "federated"
        joined = json.loads((fed / "join.json").read_text())
        assert f"running as node {joined['node_id']}" in out
        dataset = fed / "dataset.npz"
        assert stat.S_IMODE(dataset.stat().st_mode) == 0o600
        with np.load(dataset) as data:
            assert data["x"].shape == (300, 64)
            assert np.isin(data["y"], classes).mean() > 0.7  # mostly its own digits
    with np.load(work / "federated" / "holdout.npz") as holdout:
        x, y = holdout["x"], holdout["y"]
    accuracy = {}
    for version in ("2.0.0", "2.0.0-fl1", "2.0.0-fl1-int8"):
        with load_model(work / "federated" / f"digits-{version}.downloaded.onnx") as runner:
            labels = np.asarray(runner.predict({"input": x})["label"])
        accuracy[version] = float(np.mean(labels == y))
        assert f"digits {version}: held-out accuracy {accuracy[version]:.1%}" in out
    # Trained on every device's classes: far above the lab model that never saw 6-9.
    assert accuracy["2.0.0-fl1"] > accuracy["2.0.0"] + 0.2, accuracy
    assert accuracy["2.0.0-fl1-int8"] > accuracy["2.0.0-fl1"] - 0.05, accuracy
