"""The local API over real HTTP (TCP and unix socket) with real ONNX models."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.daemon.client import AgentClient, AgentClientError
from edgefleet.agent.daemon.daemon import Daemon
from edgefleet.agent.daemon.errors import DaemonError
from edgefleet.agent.runtime import load_model
from tests.agent.daemon.support import Models, daemon_config


def raw_post(daemon: Daemon, path: str, body: bytes,
             headers: dict[str, str] | None = None) -> tuple[int, dict]:
    host, port = daemon.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_predict_matches_the_runner(client: AgentClient, models: Models) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, size=(3, 16)).astype(np.float32)
    result = client.predict("mlp", {"input": x.tolist()})
    with load_model(models.mlp) as runner:
        expected = runner.predict({"input": x})["probabilities"]
    assert result.model == "mlp" and result.version == "1.0.0"
    np.testing.assert_allclose(result.outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert result.id and client.predict("mlp", {"input": x.tolist()}).id != result.id


@pytest.mark.parametrize(("inputs", "error_type"), [
    ({"input": [[0.0] * 15]}, "InputShapeError"),
    ({"input": [0.0] * 16}, "InputShapeError"),
    ({"input": [[0.0] * 16, [0.0] * 15]}, "InputShapeError"),
    ({"input": [["a"] * 16]}, "InputDtypeError"),
    ({"wrong": [[0.0] * 16]}, "UnknownInputError"),
    ({"input": [[0.0] * 16], "extra": [[1.0]]}, "UnknownInputError"),
])
def test_bad_inputs_are_400_with_the_runtime_error(client: AgentClient, inputs: dict,
                                                   error_type: str) -> None:
    with pytest.raises(AgentClientError) as info:
        client.predict("mlp", inputs)
    e = info.value
    assert e.status == 400 and e.code == "bad_input"
    assert e.detail["type"] == error_type
    assert "input" in e.message and "expected" in e.message
    assert "Traceback" not in e.message


def test_request_validation(daemon: Daemon, client: AgentClient) -> None:
    cases = [
        (b"{not json", 400, "bad_json"),
        (b'{"model": "mlp", "inputs": {"input": [[NaN]]}}', 400, "bad_json"),
        (b'{"model": "mlp", "model": "mlp", "inputs": {}}', 400, "bad_json"),
        (b"[1, 2]", 400, "bad_request"),
        (b'{"model": "mlp"}', 400, "bad_request"),
        (b'{"model": "mlp", "inputs": {"input": [[0]]}, "x": 1}', 400, "bad_request"),
        (b'{"model": 3, "inputs": {"input": [[0]]}}', 400, "bad_request"),
        (b'{"model": "mlp", "inputs": {"input": "text"}}', 400, "bad_request"),
        (b'{"model": "nope", "inputs": {"input": [[0]]}}', 404, "unknown_model"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "bad_json"),
    ]
    for body, status, code in cases:
        got_status, got = raw_post(daemon, "/v1/predict", body)
        assert (got_status, got["error"]["code"]) == (status, code), body[:60]
    status, _ = raw_post(daemon, "/v1/predict", b"{}", {"Content-Type": "text/plain"})
    assert status == 415
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1000000000\r\n\r\n{")
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 413") and b'"too_large"' in answer
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 411")
    with pytest.raises(AgentClientError) as info:
        client.request("GET", "/v1/nothing")
    assert info.value.status == 404
    with pytest.raises(AgentClientError) as info:
        client.request("GET", "/v1/predict")
    assert info.value.status == 405
    assert client.health()["status"] == "ok"  # still serving


def test_feedback_and_accuracy(daemon: Daemon, client: AgentClient, models: Models) -> None:
    right = wrong = 0
    for row, truth in zip(models.digits_x[:40], models.digits_y[:40], strict=True):
        result = client.predict("digits", {"input": [row.tolist()]})
        correct = client.feedback(result.id, int(truth))
        assert correct == (result.outputs["label"][0] == truth)
        right += bool(correct)
        wrong += not correct
    health = client.health()
    (acc,) = [a for a in health["accuracy"] if a["model"] == "digits"]
    assert (acc["labelled"], acc["correct"]) == (40, right)
    assert right > 30  # the digits model is a real classifier
    assert health["models"]["digits"]["predictions"] == 40
    assert health["models"]["digits"]["latency_ms"]["p50"] > 0
    with pytest.raises(AgentClientError) as info:
        client.feedback("no-such-id", 1)
    assert (info.value.status, info.value.code) == (404, "unknown_prediction")
    with pytest.raises(AgentClientError) as info:
        client.request("POST", "/v1/feedback", {"id": "x", "label": {"a": 1}})
    assert info.value.status == 400


def test_feedback_store_persists_across_restart(tmp_path: Path, models: Models) -> None:
    config = daemon_config(tmp_path, models)
    with Daemon(config) as d:
        client = AgentClient(d.url)
        x = models.digits_x[:2]
        result = client.predict("digits", {"input": x.tolist()})
        client.feedback(result.id, [int(v) for v in models.digits_y[:2]])
        unlabelled = client.predict("digits", {"input": x[:1].tolist()})
    with Daemon(config) as d:
        client = AgentClient(d.url)
        assert d.store is not None
        stored = d.store.get(result.id)
        assert stored is not None and stored.label == [int(v) for v in models.digits_y[:2]]
        np.testing.assert_array_equal(stored.inputs["input"], x)
        assert stored.outputs["probabilities"].shape == (2, 10)
        assert client.feedback(unlabelled.id, int(models.digits_y[0])) is not None
        assert [a["labelled"] for a in client.health()["accuracy"]] == [2]


def test_feedback_store_is_bounded(tmp_path: Path, models: Models) -> None:
    with Daemon(daemon_config(tmp_path, models, feedback_max_rows=5)) as d:
        ids = [d.predict("mlp", {"input": np.zeros((1, 16), np.float32)})[0]
               for _ in range(12)]
        assert d.predlog is not None
        d.predlog.flush()
        assert d.store is not None and d.store.count() == 5
        assert not d.store.contains(ids[0]) and d.store.contains(ids[-1])


def test_unix_socket(tmp_path: Path, models: Models) -> None:
    sock = tmp_path / "run" / "agent.sock"
    with Daemon(daemon_config(tmp_path, models, listen=f"unix:{sock}")) as d:
        assert d.url == f"unix:{sock}"
        for target in (d.url, str(sock)):
            client = AgentClient(target)
            result = client.predict("mlp", {"input": [[0.5] * 16]})
            assert len(result.outputs["probabilities"][0]) == 4
            assert client.feedback(result.id, 2) in (True, False)
            assert client.health()["models"]["mlp"]["version"] == "1.0.0"
            with pytest.raises(AgentClientError) as info:
                client.predict("mlp", {"input": [[0.5] * 3]})
            assert info.value.status == 400
    assert not sock.exists()


def test_second_daemon_on_the_same_socket_is_refused(tmp_path: Path, models: Models) -> None:
    sock = tmp_path / "agent.sock"
    with Daemon(daemon_config(tmp_path, models, listen=f"unix:{sock}")):
        (tmp_path / "b").mkdir()
        other = Daemon(daemon_config(tmp_path / "b", models, listen=f"unix:{sock}"))
        with pytest.raises(DaemonError, match="already serves"):
            other.start()
