"""The pure parts of shadow mode and of the desired hint, and the bounded shadow queue."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgefleet.agent.daemon.desired import DesiredHintError, ShadowHint, parse_desired
from edgefleet.agent.daemon.shadow import ShadowSettings, ShadowWorker, outputs_agree
from edgefleet.agent.daemon.stats import DaemonStats
from edgefleet.agent.runtime import load_model
from tests.agent.daemon.support import Models

F = np.float32


def test_classifiers_agree_on_the_predicted_class() -> None:
    a = {"probabilities": np.array([[0.1, 0.9], [0.6, 0.4]], F)}
    close = {"probabilities": np.array([[0.3, 0.7], [0.51, 0.49]], F)}
    flipped = {"probabilities": np.array([[0.3, 0.7], [0.49, 0.51]], F)}
    assert outputs_agree(a, close, "probabilities")
    assert not outputs_agree(a, flipped, "probabilities")  # one row differs
    labels = {"label": np.array([1, 0]), "probabilities": a["probabilities"]}
    assert outputs_agree(labels, {"label": np.array([1, 0]), "probabilities": flipped[
        "probabilities"]})  # no probability output named: the label output decides
    assert not outputs_agree(labels, flipped)  # its class from its probabilities differs


def test_other_models_agree_within_the_tolerance() -> None:
    a = {"y": np.array([[1.0], [2.0]], F)}
    assert outputs_agree(a, {"y": np.array([[1.0000001], [2.0]], F)})
    assert not outputs_agree(a, {"y": np.array([[1.1], [2.0]], F)})
    assert not outputs_agree(a, {"y": np.array([1.0, 2.0], F)})  # shape
    assert not outputs_agree(a, {"z": a["y"]})  # names
    assert outputs_agree(a, {"y": np.array([[1.05], [2.0]], F)}, rtol=0.1)


def test_a_full_shadow_queue_drops_and_counts(models: Models) -> None:
    stats = DaemonStats(["mlp"])
    with load_model(models.mlp) as runner:
        worker = ShadowWorker("mlp", "cand", runner, sample_rate=1.0, stats=stats,
                              settings=ShadowSettings(queue_size=2))
        x = {"input": np.zeros((1, 16), F)}
        pairs: list[tuple[Any, dict[str, np.ndarray]]] = [(x, runner.predict(x))] * 5
        worker.offer("1", pairs)  # not started: nothing is taken off the queue
        assert (worker.queued, worker.dropped) == (2, 3)
        stats.record("mlp", "1", [0.001], 0, 0)
        stats.set_shadow("mlp", "cand")
        worker.start()
        worker.close()  # what is still queued is discarded, the thread ends
        assert worker.queued == 0 and worker._thread is not None
        assert not worker._thread.is_alive()
        shadow = stats.models()["mlp"]["shadow"]
        assert shadow["compared"] == shadow["agreed"] <= 2  # the same model agrees
        rare = ShadowWorker("mlp", "cand", runner, sample_rate=0.01, stats=stats)
        rare.offer("1", pairs * 20)
        assert rare.queued < 20  # sampled, not everything


GOOD: dict[str, Any] = {"model": "mlp", "version": "1.1", "target": "mlp-1.1.tar",
                        "rollout": 4, "shadow": {"version": "1.2", "target": "mlp-1.2.tar",
                                                 "sample_rate": 0.2}}


def test_desired_hint_parsing() -> None:
    hint = parse_desired(GOOD)
    assert (hint.model, hint.version, hint.target, hint.rollout) == ("mlp", "1.1",
                                                                     "mlp-1.1.tar", 4)
    assert hint.shadow == ShadowHint("1.2", "mlp-1.2.tar", 0.2)
    assert parse_desired({**GOOD, "rollout": None, "shadow": None, "extra": 1}).shadow is None
    assert parse_desired({k: v for k, v in GOOD.items() if k not in ("rollout", "shadow")})


@pytest.mark.parametrize("body", [
    None, [], "x", {},
    {**GOOD, "model": 3}, {**GOOD, "target": ""}, {**GOOD, "version": None},
    {**GOOD, "rollout": "4"}, {**GOOD, "rollout": True}, {**GOOD, "shadow": []},
    {**GOOD, "shadow": {**GOOD["shadow"], "sample_rate": 0}},
    {**GOOD, "shadow": {**GOOD["shadow"], "sample_rate": 1.5}},
    {**GOOD, "shadow": {**GOOD["shadow"], "sample_rate": float("nan")}},
    {**GOOD, "shadow": {**GOOD["shadow"], "target": 1}},
])
def test_malformed_desired_hints_are_refused(body: Any) -> None:
    with pytest.raises(DesiredHintError):
        parse_desired(body)
