"""One runner shared by many threads: every call gets its own, correct answer."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgefleet.agent.runtime import ModelRunner, RunnerOptions, load_model
from edgefleet.agent.runtime.errors import InferenceError
from edgefleet.tools.modelgen.spec import ModelSpec


def hammer(runner: ModelRunner, spec: ModelSpec, calls: int, worker: int) -> int:
    checked = 0
    for i in range(calls):
        batch = 1 + (worker + i) % 5  # batch sizes change all the time: TFLite resizes
        inputs = spec.random_inputs(batch, seed=worker * 1000 + i)
        got = runner.predict(inputs, raw=True)
        want = spec.reference(inputs)
        for name in spec.output_names:
            assert got[name].shape == want[name].shape
            diff = np.abs(got[name].astype(np.float64) - want[name].astype(np.float64))
            assert diff.max() <= spec.atol
        checked += 1
    return checked


@pytest.mark.parametrize(
    "key", ["onnx-mlp", "onnx-multi", "tflite-mlp", "tflite-multi", "tflite-mlp-uint8",
            "tflite-cnn-nhwc-int8"],
)
def test_concurrent_predict_from_threads(key: str, zoo: dict[str, ModelSpec]) -> None:
    spec = zoo[key]
    with (
        load_model(spec.path, RunnerOptions(intra_op_threads=1)) as runner,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        futures = [pool.submit(hammer, runner, spec, 25, w) for w in range(8)]
        assert sum(f.result() for f in futures) == 200


def test_threads_across_several_models(zoo: dict[str, ModelSpec]) -> None:
    keys = ["onnx-cnn-nchw", "tflite-cnn-nchw", "onnx-uint8-io", "tflite-mlp-int8"]
    runners = {k: load_model(zoo[k].path) for k in keys}
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(hammer, runners[k], zoo[k], 15, w)
                       for w, k in enumerate(keys * 2)]
            assert sum(f.result() for f in futures) == 15 * 8
    finally:
        for runner in runners.values():
            runner.close()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_close_while_other_threads_predict(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    spec = zoo[f"{fmt}-mlp"]
    runner = load_model(spec.path)
    x = spec.random_inputs(2)
    first_calls = threading.Barrier(5)
    seen: dict[int, list[str]] = {}

    def worker(n: int) -> None:
        results = seen.setdefault(n, [])
        runner.predict(x)
        results.append("ok")
        first_calls.wait(timeout=30)
        for _ in range(1_000_000):  # until the close is seen; bounded to never hang
            try:
                runner.predict(x)
                results.append("ok")
            except InferenceError as exc:
                assert "closed" in str(exc)
                results.append("closed")
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    first_calls.wait(timeout=30)  # every thread has had a good answer
    runner.close()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seen) == [0, 1, 2, 3]
    for results in seen.values():
        assert results[0] == "ok" and results[-1] == "closed"
        assert results.count("closed") == 1
