"""(b) int8 versus float32: file size, latency and accuracy.

Size and latency are measured on a compute-bound MLP 256→1024→1024→10 (random weights),
float32 against int8: ONNX quantized by ``edgefleet.tools.quantize`` (dynamic, and static
QDQ calibrated on 256 uniform samples) and the TFLite full-integer int8 build of the same
network. Latency is ``runner.predict`` on the same batch, float and int8 timed
alternately; the ratio is of their medians. Accuracy cannot be judged on random weights,
so the same three quantization paths are applied to an MLP trained on scikit-learn's
digits and the held-out accuracy change is reported, in points.
Goals: size ratio ≤ 0.30, latency ratio ≤ 0.70, accuracy change ≥ -1 point.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.figures import Figure, Goal
from benchmarks.settings import Settings
from benchmarks.timing import interleaved
from edgefleet.agent.runtime import RunnerOptions, load_model
from edgefleet.tools.modelgen import onnx_models, tflite_models
from edgefleet.tools.modelgen.digits import train_digits_mlp
from edgefleet.tools.quantize import QuantizeOptions, QuantMode, quantize_model

SIZES = (256, 1024, 1024, 10)
SIZE_GOAL = 0.30
LATENCY_GOAL = 0.70
ACCURACY_GOAL = -1.0
VARIANTS = ("onnx-dynamic", "onnx-static", "tflite-int8")


def _compute_bound_models(workdir: Path) -> dict[str, tuple[Path, Path]]:
    """variant -> (float model, int8 model) for the 256→1024→1024→10 MLP."""
    float_onnx = onnx_models.mlp(workdir / "cb_float.onnx", sizes=SIZES).path
    calibration = np.random.default_rng(1).uniform(-1, 1, size=(256, SIZES[0]))
    calibration = calibration.astype(np.float32)
    quantize_model(float_onnx, workdir / "cb_dynamic.onnx")
    quantize_model(float_onnx, workdir / "cb_static.onnx",
                   QuantizeOptions(mode=QuantMode.STATIC), calibration=calibration)
    float_tflite = tflite_models.mlp(workdir / "cb_float.tflite", sizes=SIZES).path
    int8_tflite = tflite_models.mlp(workdir / "cb_int8.tflite", sizes=SIZES,
                                    quantize="int8").path
    return {
        "onnx-dynamic": (float_onnx, workdir / "cb_dynamic.onnx"),
        "onnx-static": (float_onnx, workdir / "cb_static.onnx"),
        "tflite-int8": (float_tflite, int8_tflite),
    }


def _digits_accuracy(workdir: Path) -> dict[str, tuple[float, float]]:
    """variant -> (float accuracy, int8 accuracy) on held-out digits, in [0, 1]."""
    layers, split = train_digits_mlp(seed=0, hidden=(64,))
    results: dict[str, tuple[float, float]] = {}
    float_onnx = onnx_models.mlp(workdir / "digits.onnx", weights=layers,
                                 input_range=(0.0, 1.0)).path
    no_gate = {"max_accuracy_drop": 100.0}  # report the change; the gate is not the point
    for variant, options in (
        ("onnx-dynamic", QuantizeOptions(mode=QuantMode.DYNAMIC, **no_gate)),
        ("onnx-static", QuantizeOptions(mode=QuantMode.STATIC, **no_gate)),
    ):
        report = quantize_model(float_onnx, workdir / f"digits_{variant}.onnx", options,
                                calibration=split.x_calib, eval_x=split.x_eval,
                                eval_y=split.y_eval)
        assert report.float_accuracy is not None and report.quantized_accuracy is not None
        results[variant] = (report.float_accuracy, report.quantized_accuracy)
    accuracies = []
    for quantize in (None, "int8"):
        spec = tflite_models.mlp(workdir / f"digits_{quantize}.tflite", weights=layers,
                                 quantize=quantize, input_range=(0.0, 1.0))
        with load_model(spec.path) as runner:
            scores = runner.predict(split.x_eval)[spec.output_names[0]]
        accuracies.append(float(np.mean(scores.argmax(axis=1) == split.y_eval)))
    results["tflite-int8"] = (accuracies[0], accuracies[1])
    return results


def run(workdir: Path, settings: Settings) -> Iterator[Figure]:
    """Yield size ratio, latency ratio and accuracy change for each int8 variant."""
    models = _compute_bound_models(workdir)
    options = RunnerOptions(intra_op_threads=settings.threads)
    rng = np.random.default_rng(2)
    shape = "→".join(map(str, SIZES))
    for variant in VARIANTS:
        float_path, int8_path = models[variant]
        f_size, q_size = float_path.stat().st_size, int8_path.stat().st_size
        yield Figure(
            key=f"int8.{variant}.size",
            label=f"{variant} MLP {shape}: int8/float32 file size",
            value=q_size / f_size, unit="", goal=SIZE_GOAL, direction=Goal.AT_MOST,
            detail=f"{f_size} -> {q_size} bytes",
        )
        with load_model(float_path, options) as f_runner, \
                load_model(int8_path, options) as q_runner:
            for batch in settings.int8_batches:
                x = rng.uniform(-1, 1, size=(batch, SIZES[0])).astype(np.float32)
                pair = interleaved(partial(f_runner.predict, x), partial(q_runner.predict, x),
                                   iterations=settings.int8_iterations, warmup=10)
                yield Figure(
                    key=f"int8.{variant}.latency-b{batch}",
                    label=f"{variant} MLP {shape} batch {batch}: int8/float32 p50",
                    value=pair.b_p50 / pair.a_p50, unit="", goal=LATENCY_GOAL,
                    direction=Goal.AT_MOST,
                    detail=f"float {pair.a_p50 * 1e3:.3f} ms, int8 {pair.b_p50 * 1e3:.3f} ms",
                )
    for variant, (f_acc, q_acc) in _digits_accuracy(workdir).items():
        yield Figure(
            key=f"int8.{variant}.accuracy",
            label=f"{variant} digits MLP 64→64→10: accuracy change",
            value=(q_acc - f_acc) * 100.0, unit="points", goal=ACCURACY_GOAL,
            direction=Goal.AT_LEAST,
            detail=f"float {f_acc * 100:.2f}%, int8 {q_acc * 100:.2f}% on 450 held-out digits",
        )
