"""Hot swap: predictions never fail while models are replaced, old models close when idle."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.runtime import ModelRunner, load_model
from edgefleet.agent.update.swap import ModelHolder, NoActiveModel
from edgefleet.tools.modelgen import onnx_models
from edgefleet.tools.modelgen.spec import ModelSpec


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[ModelSpec]:
    root = tmp_path_factory.mktemp("swap_models")
    return [onnx_models.mlp(root / f"m{i}.onnx", sizes=(8, 16, 3), seed=i) for i in range(4)]


class Tracked:
    """A real runner that records closes and predictions made after its close."""

    def __init__(self, runner: ModelRunner, gate: threading.Event | None = None) -> None:
        self.runner = runner
        self.gate = gate
        self.closed = threading.Event()
        self.calls_after_close = 0
        self.entered = threading.Event()

    def predict(self, inputs: Any) -> dict[str, np.ndarray]:
        if self.closed.is_set():
            self.calls_after_close += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        return self.runner.predict(inputs)

    def close(self) -> None:
        self.closed.set()
        self.runner.close()


def test_zero_failed_predictions_during_swaps(specs: list[ModelSpec]) -> None:
    inputs = specs[0].random_inputs(4, seed=3)
    expected = {i: s.reference(inputs)["probabilities"] for i, s in enumerate(specs)}
    holder = ModelHolder(Tracked(load_model(specs[0].path)), label="0")
    stop = threading.Event()
    failures: list[BaseException] = []
    served: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        n = 0
        while not stop.is_set():
            try:
                out = holder.predict(inputs)["probabilities"]
                # every answer comes from one complete model, never a mix or a closed one
                assert any(np.allclose(out, e, atol=1e-5) for e in expected.values())
                n += 1
            except BaseException as exc:
                with lock:
                    failures.append(exc)
        with lock:
            served.append(n)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    runners = []
    for k in range(12):  # several swaps, each with load in flight
        new = Tracked(load_model(specs[(k + 1) % len(specs)].path))
        runners.append(new)
        old = holder.runner
        holder.swap(new, label=str(k))
        assert isinstance(old, Tracked) and old.closed.is_set()
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(served) > 0
    assert all(r.calls_after_close == 0 for r in runners)
    holder.close()
    assert runners[-1].closed.is_set()


def test_old_model_closes_only_after_in_flight_calls(specs: list[ModelSpec]) -> None:
    gate = threading.Event()
    old = Tracked(load_model(specs[0].path), gate=gate)
    holder = ModelHolder(old, label="old")
    inputs = specs[0].random_inputs(1)
    result: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: result.update(holder.predict(inputs)))
    caller.start()
    assert old.entered.wait(10)
    swapper = threading.Thread(target=holder.swap, args=(load_model(specs[1].path), "new"))
    swapper.start()
    deadline = time.monotonic() + 10
    while holder.label != "new" and time.monotonic() < deadline:
        time.sleep(0.001)
    assert holder.label == "new"  # new calls already go to the new model ...
    swapper.join(0.1)
    assert swapper.is_alive() and not old.closed.is_set()  # ... the old one waits to drain
    holder.predict(inputs)
    gate.set()
    caller.join(10)
    swapper.join(10)
    assert "probabilities" in result and old.closed.is_set()


def test_a_stuck_call_hands_the_close_to_its_own_end(specs: list[ModelSpec]) -> None:
    gate = threading.Event()
    old = Tracked(load_model(specs[0].path), gate=gate)
    holder = ModelHolder(old, label="old", drain_timeout_s=0.05)
    caller = threading.Thread(target=holder.predict, args=(specs[0].random_inputs(1),))
    caller.start()
    assert old.entered.wait(10)
    holder.swap(load_model(specs[1].path), "new")  # returns after the drain timeout
    assert not old.closed.is_set()
    gate.set()
    caller.join(10)
    assert old.closed.is_set()


def test_empty_holder(tmp_path: Path) -> None:
    holder = ModelHolder()
    assert holder.label is None and holder.runner is None
    with pytest.raises(NoActiveModel):
        holder.predict({"input": np.zeros((1, 8), np.float32)})
    holder.close()  # nothing to close
