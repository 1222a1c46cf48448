"""Sampling, always-capture rules, input privacy, batching and the bounded ring."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.daemon.config import InputPolicy
from edgefleet.agent.daemon.predlog import LogPolicy, PredictionLog, hash_inputs
from edgefleet.agent.daemon.stats import DaemonStats
from edgefleet.agent.runtime import load_model
from edgefleet.agent.telemetry.envelope import Channel
from tests.agent.daemon.support import Models


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[Channel, Mapping[str, Any]]] = []

    def __call__(self, channel: Channel, body: Mapping[str, Any]) -> int:
        self.messages.append((channel, body))
        return len(self.messages)

    def records(self) -> list[dict[str, Any]]:
        return [r for c, b in self.messages if c is Channel.PREDICTIONS for r in b["records"]]


def make_log(policy: LogPolicy, **kwargs: Any) -> tuple[PredictionLog, Sink]:
    sink = Sink()
    plog = PredictionLog({"mlp": policy}, DaemonStats(["mlp"]), publish=sink,
                         rng=random.Random(7), **kwargs)
    return plog, sink


@pytest.fixture(scope="module")
def predictions(models: Models) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    rng = np.random.default_rng(5)
    with load_model(models.mlp) as runner:
        out = []
        for _ in range(4000):
            x = {"input": rng.uniform(-1, 1, size=(1, 16)).astype(np.float32)}
            out.append((x, runner.predict(x)))
    return out


def test_sampling_rate(predictions: list) -> None:
    plog, sink = make_log(LogPolicy(sample_rate=0.1))
    for i, (x, y) in enumerate(predictions):
        plog.log("mlp", "1", 0.001, f"id{i}", x, y)
    plog.flush()
    records = sink.records()
    assert 300 < len(records) < 500  # 400 expected; binomial sd 19
    assert {r["reason"] for r in records} == {"sample"}
    assert len({r["id"] for r in records}) == len(records)
    assert plog.stats.models()["mlp"]["predictions"] == 4000
    assert plog.stats.models()["mlp"]["sampled"] == len(records)


def test_always_capture_errors_and_low_confidence(predictions: list) -> None:
    tops = np.array([y["probabilities"].max() for _, y in predictions])
    threshold = float(np.quantile(tops, 0.2))
    plog, sink = make_log(LogPolicy(sample_rate=0.0, low_confidence=threshold,
                                    confidence_output="probabilities"))
    for i, (x, y) in enumerate(predictions):
        plog.log("mlp", "1", 0.001, f"id{i}", x, y)
    for i in range(7):
        plog.log("mlp", "1", 0.0001, f"err{i}", {"input": [[1, 2]]}, None,
                 "InputShapeError: input 'input': expected ...")
    plog.flush()
    records = sink.records()
    low = [r for r in records if r["reason"] == "low_confidence"]
    errors = [r for r in records if r["reason"] == "error"]
    assert len(low) == int((tops < threshold).sum()) and len(low) > 0
    assert all(max(r["outputs"]["probabilities"][0]) < threshold for r in low)
    assert len(errors) == 7 and all("InputShapeError" in r["error"] for r in errors)
    assert errors[0]["inputs"] == {"input": [[1, 2]]} and "outputs" not in errors[0]
    assert plog.stats.models()["mlp"]["errors"] == 7


@pytest.mark.parametrize("policy", list(InputPolicy))
def test_input_privacy(predictions: list, policy: InputPolicy) -> None:
    plog, sink = make_log(LogPolicy(sample_rate=1.0, inputs=policy))
    (x, y), _ = predictions[:2]
    plog.log("mlp", "1", 0.001, "a", x, y)
    plog.log("mlp", "1", 0.001, "b", {"input": x["input"].copy()}, y)
    plog.log("mlp", "1", 0.001, "c", {"input": [["ragged"], []]}, None, "InputDtypeError: x")
    plog.flush()
    a, b, c = sink.records()
    raw = x["input"].tolist()
    if policy is InputPolicy.KEEP:
        assert a["inputs"] == {"input": raw} and "inputs_sha256" not in a
    elif policy is InputPolicy.HASH:
        assert "inputs" not in a and a["inputs_sha256"] == b["inputs_sha256"]
        assert a["inputs_sha256"] == hash_inputs(x) and len(a["inputs_sha256"]) == 64
        assert "inputs" not in c and len(c["inputs_sha256"]) == 64
        assert str(raw[0][0])[:8] not in str(sink.messages)
    else:
        assert not {"inputs", "inputs_sha256"} & (set(a) | set(c))
    assert a["outputs"]["probabilities"] == y["probabilities"].tolist()


def test_records_are_batched_into_messages(predictions: list) -> None:
    plog, sink = make_log(LogPolicy(sample_rate=1.0), max_records_per_message=500)
    for i, (x, y) in enumerate(predictions[:1200]):
        plog.log("mlp", "1", 0.001, f"id{i}", x, y)
    plog.flush()
    sizes = [len(b["records"]) for c, b in sink.messages]
    assert sum(sizes) == 1200 and max(sizes) <= 500 and len(sizes) >= 3
    assert all(len(json.dumps(b, separators=(",", ":"))) < 200_000 for _, b in sink.messages)
    plog.policies["mlp"] = LogPolicy(sample_rate=1.0, inputs=InputPolicy.DROP)
    sink.messages.clear()
    for i, (x, y) in enumerate(predictions[:1200]):
        plog.log("mlp", "1", 0.001, f"id{i}", x, y)
    plog.flush()
    assert [len(b["records"]) for c, b in sink.messages] == [500, 500, 200]
    assert all(b["model"] == "mlp" and b["version"] == "1" for _, b in sink.messages)
    plog.policies["mlp"] = LogPolicy(sample_rate=1.0)
    huge = {"input": np.zeros((1, 200_000), np.float32)}
    plog.log("mlp", "1", 0.001, "big", huge, {"probabilities": np.ones((1, 4), np.float32)})
    plog.flush()
    big = sink.records()[-1]
    assert big["truncated"] and "inputs" not in big and big["inputs_sha256"]


def test_a_full_ring_drops_and_counts(predictions: list) -> None:
    plog, sink = make_log(LogPolicy(sample_rate=1.0), ring_size=16)
    for i, (x, y) in enumerate(predictions[:20]):
        plog.log("mlp", "1", 0.001, f"id{i}", x, y)
    assert plog.dropped == 4 and plog.queued == 16
    assert plog.flush() == 16
    assert len(sink.records()) == 16
    assert plog.stats.snapshot()["predlog"]["dropped"] == 4
