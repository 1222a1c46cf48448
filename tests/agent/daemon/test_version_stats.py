"""Heartbeat figures per served model version: reset on a swap; feedback accuracy counted.

Real ONNX models served by a real daemon over its HTTP API; the swap is a real
``ModelHolder.swap`` (what the update agent does when it switches versions).
"""

from __future__ import annotations

import numpy as np

from edgefleet.agent.daemon.client import AgentClient
from edgefleet.agent.daemon.daemon import Daemon
from edgefleet.agent.daemon.feedback import predicted_labels
from edgefleet.agent.runtime import load_model
from tests.agent.daemon.support import Models


def heartbeat_models(daemon: Daemon) -> dict:
    return daemon.stats.snapshot()["models"]


def test_feedback_accuracy_per_version_and_reset_on_swap(
        daemon: Daemon, client: AgentClient, models: Models) -> None:
    x, y = models.digits_x[:60], models.digits_y[:60]
    ids, predicted = [], []
    for row in x:
        p = client.predict("digits", {"input": [row.tolist()]})
        ids.append(p.id)
        predicted.append(int(np.argmax(p.outputs["probabilities"][0])))
    for pid, truth in zip(ids[:50], y[:50], strict=True):
        client.feedback(pid, int(truth))
    right = sum(int(p == t) for p, t in zip(predicted[:50], y[:50], strict=True))
    assert 25 < right < 50  # a real classifier, and not a trivial count

    digits = heartbeat_models(daemon)["digits"]
    assert digits["version"] == "2.0.0"
    assert digits["predictions"] == 60 and digits["errors"] == 0
    assert digits["feedback"] == {"labeled": 50, "correct": right}
    assert digits["latency_ms"]["p50"] > 0 and "shadow" not in digits
    # labelling a prediction again replaces its verdict, it is not counted twice
    wrong = (int(y[0]) + 1) % 10
    client.feedback(ids[0], wrong)
    again = heartbeat_models(daemon)["digits"]["feedback"]
    assert again["labeled"] == 50
    assert again["correct"] == right - int(predicted[0] == int(y[0]))
    assert heartbeat_models(daemon)["mlp"]["feedback"] == {"labeled": 0, "correct": 0}

    # an over-the-air style swap: the counters start again for the new version
    daemon._slots["digits"].holder.swap(load_model(models.digits), "2.1.0")
    fresh = heartbeat_models(daemon)["digits"]
    assert fresh["version"] == "2.1.0"
    assert (fresh["predictions"], fresh["errors"], fresh["sampled"]) == (0, 0, 0)
    assert fresh["latency_ms"] == {"p50": None, "p95": None}
    assert fresh["feedback"] == {"labeled": 0, "correct": 0}
    client.feedback(ids[55], int(y[55]))  # a prediction of 2.0.0: not this version's
    assert heartbeat_models(daemon)["digits"]["feedback"] == {"labeled": 0, "correct": 0}
    p = client.predict("digits", {"input": [x[0].tolist()]})
    assert p.version == "2.1.0"
    client.feedback(p.id, int(y[0]))
    now = heartbeat_models(daemon)["digits"]
    assert now["predictions"] == 1
    assert now["feedback"] == {"labeled": 1, "correct": int(predicted[0] == int(y[0]))}
    assert daemon.health()["models"]["digits"]["version"] == "2.1.0"
    # the store still knows both versions' accuracy
    versions = {a["version"] for a in daemon.health()["accuracy"] if a["model"] == "digits"}
    assert versions == {"2.0.0", "2.1.0"}


def test_predicted_class_uses_the_probability_output_first() -> None:
    outputs = {"label": np.array([0, 0]), "probabilities": np.array([[0.1, 0.9], [0.8, 0.2]],
                                                                     dtype=np.float32)}
    assert predicted_labels(outputs, "probabilities") == [1, 0]
    assert predicted_labels(outputs) == [0, 0]  # no known probability output: the label
    assert predicted_labels({"y": np.array([[0.5], [0.2]], dtype=np.float32)}) is None
