"""``edgefleet fl run|show|list|cancel`` against the real app served over HTTP (the job
runs on the worker with an injected federation; the real one is in test_end_to_end)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from edgefleet.fleet_server.auth.roles import Role
from edgefleet.tools.cli import cli
from tests.federated.conftest import DigitsSplit
from tests.fleet_server.fljobs.conftest import (
    BASE,
    GROUP,
    MODEL,
    FakeFederation,
    FlEnv,
    make_fl_env,
    trained_weights,
)


@pytest.fixture
def served(tmp_path: Path, digits: DigitsSplit) -> Iterator[tuple[FlEnv, list[str]]]:
    env = make_fl_env(tmp_path, digits, autorun=True)
    env.seed_nodes()
    env.svc.federation = FakeFederation(trained_weights(digits), [1000, 1001, 1002])  # type: ignore[assignment]
    httpd = make_server("127.0.0.1", 0, env.app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    options = ["--server", f"http://127.0.0.1:{httpd.server_port}",
               "--token", env.tokens[Role.OPERATOR]]
    yield env, options
    httpd.shutdown()
    env.svc.close()
    env.services.store.close()


def test_run_wait_show_list(served: tuple[FlEnv, list[str]]) -> None:
    env, options = served
    runner = CliRunner()
    result = runner.invoke(cli, ["fl", "run", "--model", MODEL, "--base-version", BASE,
                                 "--group", GROUP, "--rounds", "2", "--local-epochs", "2",
                                 "--strategy", "fedprox", "--dp-clip", "1.5", "--dp-noise",
                                 "0.2", "--holdout", str(env.holdout), "--margin", "0.05",
                                 "--min-nodes", "3", "--wait", *options])
    assert result.exit_code == 0, result.output
    job_id = int(result.output.splitlines()[0])
    job = env.get(f"/fl/jobs/{job_id}").json
    assert job["status"] == "succeeded"
    assert job["spec"]["strategy"] == "fedprox" and job["spec"]["min_nodes"] == 3
    assert job["spec"]["dp"] == {"clipping_norm": 1.5, "noise_multiplier": 0.2}
    assert f"registered {MODEL}@{BASE}-fl{job_id}" in result.output

    shown = runner.invoke(cli, ["fl", "show", str(job_id), "--watch", *options])
    assert shown.exit_code == 0, shown.output
    assert "round   1 (aggregated): 3 node(s), 1 failed, 300 examples" in shown.output
    assert "held-out accuracy: base 0.0" in shown.output and "accepted" in shown.output
    as_json = runner.invoke(cli, ["fl", "show", str(job_id), "--json", *options])
    assert '"result_version"' in as_json.output

    listed = runner.invoke(cli, ["fl", "list", "--status", "succeeded", *options])
    assert listed.exit_code == 0 and f"{BASE}-fl{job_id}" in listed.output
    cancel = runner.invoke(cli, ["fl", "cancel", str(job_id), *options])
    assert cancel.exit_code != 0 and "409" in cancel.output


def test_errors_are_one_line_messages(served: tuple[FlEnv, list[str]]) -> None:
    env, options = served
    runner = CliRunner()
    common = ["fl", "run", "--model", MODEL, "--base-version", BASE, "--holdout",
              str(env.holdout), *options]
    no_cohort = runner.invoke(cli, common)
    assert no_cohort.exit_code != 0 and "--group, --tag or --device" in no_cohort.output
    noise_only = runner.invoke(cli, [*common, "--group", GROUP, "--dp-noise", "1"])
    assert noise_only.exit_code != 0 and "--dp-noise needs --dp-clip" in noise_only.output
    unknown = runner.invoke(cli, [*common, "--group", GROUP, "--base-version", "7.7"])
    assert unknown.exit_code != 0 and "server answered 404" in unknown.output
    assert "Traceback" not in unknown.output


def test_run_with_a_canary(served: tuple[FlEnv, list[str]]) -> None:
    """``--canary`` passes the rollout fields through; the job's result says what became
    of the canary (this server has no update repositories, so it records why not)."""
    env, options = served
    runner = CliRunner()
    canary = json.dumps({"target": {"group": GROUP, "percent": 50}, "waves": [1.0]})
    result = runner.invoke(cli, ["fl", "run", "--model", MODEL, "--base-version", BASE,
                                 "--group", GROUP, "--rounds", "1", "--holdout",
                                 str(env.holdout), "--margin", "-1", "--canary", canary,
                                 "--wait", *options])
    assert result.exit_code == 0, result.output
    job = env.get(f"/fl/jobs/{int(result.output.splitlines()[0])}").json
    assert job["spec"]["canary"]["target"] == {"group": GROUP, "percent": 50.0}
    recorded = job["result"]["canary"]
    assert recorded["created"] is False and recorded["reason"].startswith("canary not created")
    assert recorded["reason"] in result.output

    common = ["fl", "run", "--model", MODEL, "--base-version", BASE, "--group", GROUP,
              "--holdout", str(env.holdout), *options]
    bad = runner.invoke(cli, [*common, "--canary", "{not json"])
    assert bad.exit_code != 0 and "--canary is not JSON" in bad.output
    no_target = runner.invoke(cli, [*common, "--canary", '{"waves": [1.0]}'])
    assert no_target.exit_code != 0 and "server answered 400" in no_target.output
