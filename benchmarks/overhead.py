"""(a) What the ``ModelRunner`` adds over the raw runtime call.

Same model, same input array, same process: the raw call (onnxruntime ``session.run``;
LiteRT ``set_tensor`` / ``invoke`` / ``get_tensor``) on the runner's own session or
interpreter and ``runner.predict`` are timed alternately, and the median of their
round-by-round difference (runner minus raw, both run back to back) is the overhead.
Goals: ≤ 15 µs p50 on a tiny MLP, ≤ 2 % on a model whose raw call takes ≥ 1 ms. The
≥ 1 ms line also shows the overhead with ``reject_non_finite=False``: scanning the input
for NaN/inf is most of what the runner adds on large inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.figures import Figure, Goal
from benchmarks.settings import Settings
from benchmarks.timing import interleaved, p50_seconds
from edgefleet.agent.runtime import ModelRunner, RunnerOptions, load_model
from edgefleet.tools.modelgen import onnx_models, tflite_models

TINY = (16, 32, 4)
HEAVY = (256, 1024, 1024, 10)
TINY_GOAL_US = 15.0
HEAVY_GOAL_PCT = 2.0
HEAVY_MIN_S = 1e-3


def _raw_onnx(runner: ModelRunner) -> Callable[[np.ndarray], object]:
    """``session.run`` on the runner's own onnxruntime session."""
    session = runner._session  # the benchmark's privilege
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    run = session.run
    return lambda x: run(outputs, {name: x})


def _raw_tflite(runner: ModelRunner) -> Callable[[np.ndarray], object]:
    """set_tensor / invoke / get_tensor on the runner's own LiteRT interpreter."""
    interpreter = runner._interpreter
    in_index = interpreter.get_input_details()[0]["index"]
    out_index = interpreter.get_output_details()[0]["index"]
    set_tensor, invoke, get_tensor = (interpreter.set_tensor, interpreter.invoke,
                                      interpreter.get_tensor)

    def call(x: np.ndarray) -> object:
        set_tensor(in_index, x)
        invoke()
        return get_tensor(out_index)

    return call


def _pair(kind: str, path: Path, threads: int, *, reject_non_finite: bool = True
          ) -> tuple[Callable[[np.ndarray], object], ModelRunner]:
    """A runner and the raw call of the very same session / interpreter.

    Sharing the runtime object means both sides use the same weights in the same
    memory, so the difference is only what ``predict`` does around the call. (Two
    separate sessions of a multi-megabyte model evict each other's weights from the
    caches and the comparison measures that instead.)
    """
    options = RunnerOptions(intra_op_threads=threads, reject_non_finite=reject_non_finite)
    runner = load_model(path, options)
    return (_raw_onnx(runner) if kind == "onnx" else _raw_tflite(runner)), runner


def _heavy_batch(runner: ModelRunner, rng: np.random.Generator) -> int:
    """The smallest power-of-two batch whose call takes at least 1 ms (max 1024).

    Found through ``runner.predict``, which also sizes a TFLite interpreter's input for
    the batch, so the raw call afterwards runs on correctly sized tensors.
    """
    batch = 8
    while batch < 1024:
        x = rng.uniform(-1, 1, size=(batch, HEAVY[0])).astype(np.float32)
        if p50_seconds(partial(runner.predict, x)) >= HEAVY_MIN_S * 1.2:
            break
        batch *= 2
    x = rng.uniform(-1, 1, size=(batch, HEAVY[0])).astype(np.float32)
    runner.predict(x)  # leave the interpreter sized for this batch
    return batch


def run(workdir: Path, settings: Settings) -> Iterator[Figure]:
    """Yield the four overhead figures (tiny and ≥ 1 ms, for ONNX and TFLite)."""
    rng = np.random.default_rng(0)
    builders = {"onnx": onnx_models.mlp, "tflite": tflite_models.mlp}
    for kind, build in builders.items():
        tiny = build(workdir / f"tiny.{kind}", sizes=TINY)
        raw, runner = _pair(kind, tiny.path, settings.threads)
        x = rng.uniform(-1, 1, size=(1, TINY[0])).astype(np.float32)
        with runner:
            pair = interleaved(partial(raw, x), partial(runner.predict, x),
                               iterations=settings.tiny_iterations, warmup=200)
        added_us = pair.added_p50 * 1e6
        yield Figure(
            key=f"overhead.{kind}.tiny",
            label=f"{kind} tiny MLP {'→'.join(map(str, TINY))}: runner overhead p50",
            value=added_us, unit="µs", goal=TINY_GOAL_US, direction=Goal.AT_MOST,
            detail=f"raw {pair.a_p50 * 1e6:.1f} µs, runner {pair.b_p50 * 1e6:.1f} µs, "
                   f"{settings.tiny_iterations} calls each",
        )

        heavy = build(workdir / f"heavy.{kind}", sizes=HEAVY)
        added: dict[bool, float] = {}
        for check in (True, False):  # the default, then without the NaN/inf input scan
            raw, runner = _pair(kind, heavy.path, settings.threads, reject_non_finite=check)
            with runner:
                batch = _heavy_batch(runner, np.random.default_rng(1))
                x = rng.uniform(-1, 1, size=(batch, HEAVY[0])).astype(np.float32)
                pair = interleaved(partial(raw, x), partial(runner.predict, x),
                                   iterations=settings.heavy_iterations, warmup=5)
            added[check] = pair.added_p50 / pair.a_p50 * 100.0
            if check:
                main = pair
        yield Figure(
            key=f"overhead.{kind}.heavy",
            label=f"{kind} MLP {'→'.join(map(str, HEAVY))} batch {batch}: runner overhead",
            value=added[True], unit="%", goal=HEAVY_GOAL_PCT, direction=Goal.AT_MOST,
            detail=f"raw {main.a_p50 * 1e3:.3f} ms, runner {main.b_p50 * 1e3:.3f} ms, "
                   f"{settings.heavy_iterations} calls each; with reject_non_finite=False "
                   f"{added[False]:+.2f} %",
        )
