"""Held-out evaluation and quantization of a job's result (files in, numbers out).

The candidate is judged exactly as devices would run it: the ONNX graph through the agent
runtime (onnxruntime), on the hold-out set the job names (an ``.npz`` with ``x`` [N, F]
and integer ``y`` [N]). Quantization uses the project quantizer
(``edgefleet.tools.quantize``: dynamic int8 with an accuracy gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.fleet_server.fljobs.errors import JobInvalid


@dataclass(frozen=True)
class Holdout:
    """A job's central hold-out set."""

    x: np.ndarray
    y: np.ndarray


def load_holdout(path: Path, n_features: int | None = None) -> Holdout:
    """Read and check a hold-out ``.npz``.

    Raises:
        JobInvalid: missing/unreadable file, no ``x``/``y``, wrong shapes or types.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"])
            y = np.asarray(data["y"])
    except (OSError, KeyError, ValueError) as e:
        raise JobInvalid(f"holdout {path}: cannot read x and y ({e})") from e
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise JobInvalid(f"holdout {path}: need x [N, F] and y [N] with N > 0, "
                         f"got {x.shape} and {y.shape}")
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise JobInvalid(f"holdout {path}: x must be numeric and y integer class ids")
    if n_features is not None and x.shape[1] != n_features:
        raise JobInvalid(f"holdout {path}: x has {x.shape[1]} features, the model takes "
                         f"{n_features}")
    if not np.isfinite(x).all():
        raise JobInvalid(f"holdout {path}: x holds NaN or infinite values")
    return Holdout(x.astype(np.float32), y.astype(np.int64))


def onnx_accuracy(model_path: Path, holdout: Holdout) -> float:
    """Accuracy of the ONNX model at ``model_path`` on ``holdout`` (agent runtime)."""
    from edgefleet.agent.runtime import load_model
    from edgefleet.tools.evaluation import accuracy, as_inputs, class_output, predict_all

    with load_model(model_path) as runner:
        inputs = as_inputs(holdout.x, runner.signature.input_names, "holdout")
        outputs = predict_all(runner, inputs)
    return float(accuracy(outputs[class_output(outputs)], holdout.y))


@dataclass(frozen=True)
class QuantizeOutcome:
    """The int8 model, or why there is none."""

    path: Path | None
    accuracy: float | None
    size_bytes: int | None
    error: str | None


def quantize(src: Path, dst: Path, holdout: Holdout, max_drop_points: float) -> QuantizeOutcome:
    """Dynamic int8 quantization of ``src`` gated on ``holdout`` accuracy."""
    from edgefleet.tools.errors import ToolError
    from edgefleet.tools.quantize import QuantizeOptions, quantize_model

    try:
        report = quantize_model(src, dst, QuantizeOptions(max_accuracy_drop=max_drop_points),
                                eval_x=holdout.x, eval_y=holdout.y)
    except ToolError as e:
        return QuantizeOutcome(None, None, None, str(e))
    return QuantizeOutcome(dst, report.quantized_accuracy, report.quantized_size_bytes, None)
