"""Plain data describing a model: framework, tensor specs, quantization, options.

These are frozen values with no runtime dependency, so the manifest builder, the CLI and
the fleet server can use them (``Signature.to_dict`` / ``from_dict``) without loading a
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

Dim = int | str | None
"""One dimension: an int is static; a str (ONNX symbolic name) or None is dynamic."""


class Framework(StrEnum):
    """The model format, which decides the backend."""

    ONNX = "onnx"
    TFLITE = "tflite"


@dataclass(frozen=True)
class Quantization:
    """Affine quantization ``real = (q - zero_point) * scale``.

    One scale/zero point for a per-tensor tensor; one per channel along ``axis`` for a
    per-channel tensor (``axis`` is None for per-tensor).
    """

    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int | None = None

    def __post_init__(self) -> None:
        if not self.scales or len(self.scales) != len(self.zero_points):
            raise ValueError("quantization needs as many zero points as scales (at least one)")
        if len(self.scales) > 1 and self.axis is None:
            raise ValueError("per-channel quantization needs an axis")

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "scales": list(self.scales),
            "zero_points": list(self.zero_points),
            "axis": self.axis,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quantization:
        axis = data.get("axis")
        return cls(
            scales=tuple(float(s) for s in data["scales"]),
            zero_points=tuple(int(z) for z in data["zero_points"]),
            axis=None if axis is None else int(axis),
        )


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype[Any]
    quantization: Quantization | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_quantized(self) -> bool:
        return self.quantization is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype.name if self.dtype != np.dtype(object) else "object",
            "quantization": None if self.quantization is None else self.quantization.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        quant = data.get("quantization")
        return cls(
            name=str(data["name"]),
            shape=tuple(d if d is None or isinstance(d, str) else int(d) for d in data["shape"]),
            dtype=np.dtype(data["dtype"]),
            quantization=None if quant is None else Quantization.from_dict(quant),
        )


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(d) for d in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(d) for d in data["outputs"]),
        )


@dataclass(frozen=True)
class RunnerOptions:
    """How a runner is created.

    Attributes:
        intra_op_threads: threads inside one operator (onnxruntime intra-op pool, LiteRT
            ``num_threads``); None lets the runtime decide.
        inter_op_threads: threads running independent operators in parallel
            (onnxruntime only; LiteRT has no such pool); None lets the runtime decide.
        reject_non_finite: refuse float inputs that contain NaN or infinity.
    """

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    reject_non_finite: bool = True

    def __post_init__(self) -> None:
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be None or a positive int, got {value!r}")
