"""``edgefleet model push / promote / approve`` over real HTTP against the real app."""

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

from .conftest import ApiEnv, make_api_env, make_onnx


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, ApiEnv]]:
    env = make_api_env(tmp_path / "data", (("op1", Role.OPERATOR), ("op2", Role.OPERATOR),
                                           ("viewer1", Role.VIEWER)))
    httpd = make_server("127.0.0.1", 0, env.app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", env
    finally:
        httpd.shutdown()
        thread.join()
        env.services.store.close()


def run(args: list[str], token: str) -> object:
    return CliRunner().invoke(cli, args, env={"EDGEFLEET_API_TOKEN": token})


def test_push_approve_promote_end_to_end(live: tuple[str, ApiEnv], tmp_path: Path):
    url, env = live
    model = make_onnx(tmp_path / "churn.onnx")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"metrics": {"accuracy": 0.93}, "code_version": "git:1234"}))
    pushed = CliRunner().invoke(
        cli, ["model", "push", str(model), "--name", "churn", "--version", "1.0",
              "--metadata", str(meta), "--server", url, "--token", env.tokens["op1"]])
    assert pushed.exit_code == 0, pushed.output
    assert pushed.output.splitlines()[0] == "churn@1.0"
    record = env.services.extras["registry"].get_version("churn", "1.0")
    assert record["metrics"] == {"accuracy": 0.93}
    assert env.services.extras["registry"].artifact_path("churn", "1.0").read_bytes() == \
        model.read_bytes()

    base = ["churn", "1.0", "--server", url]
    early = run(["model", "promote", *base, "--to", "production"], env.tokens["op1"])
    assert early.exit_code == 1 and "409" in early.output
    staged = run(["model", "promote", *base, "--to", "staging"], env.tokens["op1"])
    assert staged.exit_code == 0 and "now staging" in staged.output
    own = run(["model", "approve", *base, "--reason", "mine"], env.tokens["op1"])
    assert own.exit_code == 1 and "approval_forbidden" in own.output
    ok = run(["model", "approve", *base, "--reason", "accuracy 0.93 on holdout"],
             env.tokens["op2"])
    assert ok.exit_code == 0, ok.output
    prod = run(["model", "promote", *base, "--to", "production"], env.tokens["op1"])
    assert prod.exit_code == 0 and "now production" in prod.output
    actions = [e["action"] for e in reversed(env.services.audit.list(
        target_type="model_version")[0])]
    assert actions == ["model.version.upload", "model.version.stage", "model.version.approve",
                       "model.version.stage"]


def test_push_errors_are_one_line(live: tuple[str, ApiEnv], tmp_path: Path):
    url, env = live
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    bad = run(["model", "push", str(junk), "--name", "m", "--version", "1", "--server", url],
              env.tokens["op1"])
    assert bad.exit_code == 1 and "422" in bad.output and "Traceback" not in bad.output
    model = make_onnx(tmp_path / "m.onnx")
    viewer = run(["model", "push", str(model), "--name", "m", "--version", "1",
                  "--server", url], env.tokens["viewer1"])
    assert viewer.exit_code == 1 and "403" in viewer.output
    wrong = run(["model", "push", str(model), "--name", "m", "--version", "1",
                 "--server", url], "efa_wrong")
    assert wrong.exit_code == 1 and "401" in wrong.output
    down = run(["model", "push", str(model), "--name", "m", "--version", "1",
                "--server", "http://127.0.0.1:9"], env.tokens["op1"])
    assert down.exit_code == 1 and "cannot reach" in down.output
