"""Steps 1-5: train, inspect, quantize, benchmark and run a digits classifier."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.tools.demo.core import Demo


@dataclass(frozen=True)
class Models:
    float_model: Path
    int8_model: Path
    eval_x: Path
    eval_y: Path


def model_steps(demo: Demo) -> Models:
    from edgefleet.tools.modelgen.digits import build_digits_models

    demo.step("Train a digits classifier (scikit-learn's bundled 8x8 digits) and export ONNX")
    art = build_digits_models(demo.work / "models")
    demo.show(f"float model: {art.float_model} (held-out accuracy {art.mlp_accuracy:.1%})")

    demo.step("Inspect the model: signature, operators, size")
    demo.cli("model", "inspect", str(art.float_model))

    demo.step("Quantize to int8 (static, calibrated), refusing it if accuracy drops > 1 point")
    int8 = demo.work / "models" / "digits.int8.onnx"
    demo.cli("model", "quantize", str(art.float_model), str(int8), "--mode", "static",
             "--calibration", str(art.calibration), "--eval", str(art.eval_x),
             "--labels", str(art.eval_y), "--max-accuracy-drop", "1")

    demo.step("Benchmark float32 against int8 on this machine")
    for path in (art.float_model, int8):
        demo.cli("model", "bench", str(path), "--iterations", "300", "--warmup", "30")

    demo.step("Predict with the agent runtime on three held-out digits")
    x = np.load(art.eval_x)[:3]
    y = np.load(art.eval_y)[:3]
    sample = demo.work / "models" / "three-digits.npy"
    np.save(sample, x)
    out = json.loads(demo.cli("agent", "predict", "--model", str(int8), "--input", str(sample),
                              show=False))
    for name, values in out.items():
        arr = np.asarray(values)
        if arr.ndim == 2 and arr.shape[1] > 1:
            demo.show(f"{name}: predicted {arr.argmax(axis=1).tolist()}, true {y.tolist()}")
        else:
            demo.show(f"{name}: {arr.tolist()}")
    return Models(art.float_model, int8, art.eval_x, art.eval_y)
