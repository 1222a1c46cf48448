"""What a generated model is: its file, its signature, its weights and its numpy reference.

Public names:

* :class:`Framework`, :class:`Precision`: closed sets (ONNX/TFLite; float32, float16,
  int8, uint8).
* :class:`QuantParams`: per-tensor affine quantization ``real = scale * (q - zero_point)``.
* :class:`TensorInfo`: one input or output (name, shape with ``None`` for a dynamic
  dimension, numpy dtype name, optional quantization, value range for sample data).
* :class:`ModelSpec`: returned by every builder. ``reference(inputs)`` is a pure-numpy
  forward pass taking and returning exactly what the runtime takes and returns (same
  names, same dtypes); ``float_reference(inputs)`` is the float forward pass of the float
  weights (float inputs, float outputs), equal to ``reference`` for float models.
* :class:`ModelGenError`: the package's error (bad builder arguments).

Tolerances are part of the spec, so callers need not guess them:

* ``atol``: runtime output vs ``reference`` output, in output units (quantization steps
  for int8/uint8 outputs, plain units for float outputs).
* ``float_atol``: dequantized runtime output vs ``float_reference`` output, in float units.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]
Forward = Callable[[Mapping[str, np.ndarray]], Arrays]


class ModelGenError(ValueError):
    """A builder was called with arguments that cannot make a valid model."""


class Framework(enum.Enum):
    ONNX = "onnx"
    TFLITE = "tflite"


class Precision(enum.Enum):
    """How the weights (and for integer models the activations) are stored."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"  # float16 weights, float32 inputs/outputs
    INT8 = "int8"  # full-integer: int8 weights/activations, int32 biases
    UINT8 = "uint8"  # int8 inside, uint8 quantized input/output tensors


@dataclass(frozen=True)
class QuantParams:
    """Per-tensor affine quantization: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray, dtype: str) -> np.ndarray:
        """Round-half-away-from-zero quantization with saturation to ``dtype``'s range."""
        info = np.iinfo(np.dtype(dtype))
        q = round_half_away(np.asarray(x, dtype=np.float64) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((np.asarray(q, dtype=np.float64) - self.zero_point) * self.scale).astype(
            np.float32
        )


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Rounding as TFLite's integer kernels do it (half away from zero), as int64."""
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output.

    ``shape`` uses ``None`` for a dynamic dimension (the batch, usually). ``value_range``
    is the float range sample data should come from (for integer index inputs: the
    valid index range, inclusive).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    quant: QuantParams | None = None
    value_range: tuple[float, float] = (-1.0, 1.0)

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dimension replaced by ``batch``."""
        return tuple(batch if d is None else d for d in self.shape)


@dataclass(frozen=True)
class ModelSpec:
    """A generated model file and everything needed to check a runtime against it."""

    path: Path
    framework: Framework
    precision: Precision
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    # Float weights by name ("dense0.weight" is [in, out], numpy convention x @ W + b).
    weights: Mapping[str, np.ndarray] = field(repr=False, compare=False)
    forward: Forward = field(repr=False, compare=False)
    float_forward: Forward = field(repr=False, compare=False)
    atol: float = 1e-5
    float_atol: float = 1e-5

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def input(self, name: str) -> TensorInfo:
        return _by_name(self.inputs, name)

    def output(self, name: str) -> TensorInfo:
        return _by_name(self.outputs, name)

    def reference(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Numpy forward pass on exactly what the runtime takes (model dtypes).

        Raises:
            ModelGenError: an input is missing or has the wrong dtype.
        """
        self._check_inputs(inputs, quantized=True)
        return self.forward(inputs)

    def float_reference(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Float forward pass of the float weights; inputs given as float values.

        For quantized inputs pass the *real* (dequantized) values; integer index
        inputs are passed as they are.
        """
        self._check_inputs(inputs, quantized=False)
        return self.float_forward(inputs)

    def quantize_inputs(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Float values -> what the runtime takes (identity for unquantized inputs)."""
        out: Arrays = {}
        for info in self.inputs:
            x = np.asarray(inputs[info.name])
            out[info.name] = (
                info.quant.quantize(x, info.dtype) if info.quant else x.astype(info.dtype)
            )
        return out

    def dequantize_outputs(self, outputs: Mapping[str, np.ndarray]) -> Arrays:
        """What the runtime returned -> float values (identity for float outputs)."""
        out: Arrays = {}
        for info in self.outputs:
            y = np.asarray(outputs[info.name])
            out[info.name] = info.quant.dequantize(y) if info.quant else y
        return out

    def random_float_inputs(self, batch: int = 1, seed: int = 0) -> Arrays:
        """Float sample inputs drawn uniformly from each input's ``value_range``."""
        rng = np.random.default_rng(seed)
        out: Arrays = {}
        for info in self.inputs:
            low, high = info.value_range
            shape = info.concrete_shape(batch)
            if np.issubdtype(np.dtype(info.dtype), np.integer) and info.quant is None:
                out[info.name] = rng.integers(int(low), int(high) + 1, size=shape).astype(
                    info.dtype
                )
            else:
                out[info.name] = rng.uniform(low, high, size=shape).astype(np.float32)
        return out

    def random_inputs(self, batch: int = 1, seed: int = 0) -> Arrays:
        """Sample inputs in the model's own dtypes (quantized where the model is)."""
        return self.quantize_inputs(self.random_float_inputs(batch, seed))

    def _check_inputs(self, inputs: Mapping[str, np.ndarray], *, quantized: bool) -> None:
        for info in self.inputs:
            if info.name not in inputs:
                raise ModelGenError(f"missing input {info.name!r}")
            if quantized or info.quant is None:
                got = np.asarray(inputs[info.name]).dtype
                expected = np.dtype(info.dtype)
                if info.quant is None and not quantized and expected.kind == "f":
                    continue  # float reference accepts any float input
                if got != expected:
                    raise ModelGenError(
                        f"input {info.name!r} has dtype {got}, the model takes {expected}"
                    )


def _by_name(tensors: tuple[TensorInfo, ...], name: str) -> TensorInfo:
    for t in tensors:
        if t.name == name:
            return t
    raise ModelGenError(f"no tensor named {name!r}; have {[t.name for t in tensors]}")
