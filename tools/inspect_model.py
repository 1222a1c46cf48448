"""Describe a model file: signature, operators, size and quantization.

``inspect_model(path) -> ModelInfo``; ``ModelInfo.to_dict()`` is JSON-ready and
``ModelInfo.to_text()`` is for people. Quantization is listed per tensor: its integer
type, its scale(s) and zero point(s), and for per-channel tensors the channel axis and
the number of channels.

* ONNX: tensors quantized by QuantizeLinear/DequantizeLinear nodes (static QDQ models)
  and integer weights with ``<name>_scale`` / ``<name>_zero_point`` initializers (what
  onnxruntime's dynamic quantization writes); ``DynamicQuantizeLinear`` nodes mean the
  activations are quantized at run time.
* TFLite: every tensor that carries quantization parameters in the flatbuffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.runtime import Framework, Signature, TensorSpec, load_model

_TEXT_SCALES = 4  # per-channel scales shown in text output before eliding


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantized tensor of the graph.

    Attributes:
        name: the (integer) tensor's name.
        role: "weight" (a constant) or "activation" (computed at run time).
        dtype: the integer dtype name ("int8", "uint8", "int32", ...).
        shape: its shape when known (weights; TFLite tensors), else ().
        scales, zero_points: one entry per tensor, or one per channel.
        axis: the channel axis for per-channel quantization, None for per-tensor.
    """

    name: str
    role: str
    dtype: str
    shape: tuple[int | str | None, ...]
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int | None

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "per_channel": self.per_channel,
            "axis": self.axis,
            "scales": list(self.scales),
            "zero_points": list(self.zero_points),
        }


@dataclass(frozen=True)
class ModelInfo:
    """Everything ``edgefleet model inspect`` reports about one file."""

    path: Path
    framework: Framework
    size_bytes: int
    signature: Signature
    operators: tuple[str, ...]
    quantized_tensors: tuple[QuantizedTensor, ...]
    dynamic_activations: bool  # activations quantized at run time (ONNX dynamic)
    weight_elements: dict[str, int]  # constant tensor dtype -> number of elements

    @property
    def quantized(self) -> bool:
        return bool(self.quantized_tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "framework": self.framework.value,
            "size_bytes": self.size_bytes,
            "signature": self.signature.to_dict(),
            "operators": list(self.operators),
            "quantization": {
                "quantized": self.quantized,
                "dynamic_activations": self.dynamic_activations,
                "per_channel_tensors": sum(t.per_channel for t in self.quantized_tensors),
                "tensors": [t.to_dict() for t in self.quantized_tensors],
            },
            "weight_elements": dict(self.weight_elements),
        }

    def to_text(self) -> str:
        lines = [
            f"model:      {self.path}",
            f"framework:  {self.framework.value}",
            f"size:       {self.size_bytes} bytes ({self.size_bytes / 1024:.1f} KiB)",
            "inputs:",
            *(f"  {_tensor_line(t)}" for t in self.signature.inputs),
            "outputs:",
            *(f"  {_tensor_line(t)}" for t in self.signature.outputs),
            f"operators:  {', '.join(self.operators) or '(none)'}",
        ]
        if self.weight_elements:
            weights = ", ".join(f"{n} {d}" for d, n in sorted(self.weight_elements.items()))
            lines.append(f"weights:    {weights} elements")
        if not self.quantized:
            lines.append("quantization: none (float model)")
            return "\n".join(lines)
        per_channel = sum(t.per_channel for t in self.quantized_tensors)
        summary = (f"quantization: {len(self.quantized_tensors)} quantized tensor(s), "
                   f"{per_channel} per-channel")
        if self.dynamic_activations:
            summary += "; activations quantized at run time (dynamic)"
        lines.append(summary)
        lines.extend(f"  {_quant_line(t)}" for t in self.quantized_tensors)
        return "\n".join(lines)


def _dims(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _tensor_line(t: TensorSpec) -> str:
    text = f"{t.name}: {t.dtype.name} {_dims(t.shape)}"
    if t.quantization is not None:
        q = t.quantization
        if q.per_channel:
            text += f" quantized per-channel (axis {q.axis}, {len(q.scales)} channels)"
        else:
            text += f" quantized scale={q.scales[0]:.6g} zero_point={q.zero_points[0]}"
    return text


def _quant_line(t: QuantizedTensor) -> str:
    head = f"{t.name} ({t.role}, {t.dtype}{' ' + _dims(t.shape) if t.shape else ''})"
    if not t.per_channel:
        return f"{head}: per-tensor scale={t.scales[0]:.6g} zero_point={t.zero_points[0]}"
    shown = ", ".join(f"{s:.4g}" for s in t.scales[:_TEXT_SCALES])
    more = ", ..." if len(t.scales) > _TEXT_SCALES else ""
    zps = sorted(set(t.zero_points))
    zp_text = str(zps[0]) if len(zps) == 1 else f"{len(zps)} distinct"
    return (f"{head}: per-channel axis={t.axis}, {len(t.scales)} channels, "
            f"scales [{shown}{more}], zero_point {zp_text}")


def inspect_model(path: str | Path) -> ModelInfo:
    """Load ``path`` and describe it.

    Raises:
        ModelLoadError: the file is missing, not a model, corrupt or unsupported.
    """
    with load_model(path) as runner:
        if runner.framework is Framework.ONNX:
            tensors, dynamic, weights = _onnx_quantization(runner.path)
        else:
            tensors, dynamic, weights = _tflite_quantization(runner.path)
        return ModelInfo(
            path=runner.path,
            framework=runner.framework,
            size_bytes=runner.size_bytes,
            signature=runner.signature,
            operators=tuple(runner.operators()),
            quantized_tensors=tensors,
            dynamic_activations=dynamic,
            weight_elements=weights,
        )


# -- ONNX ------------------------------------------------------------------------------

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _onnx_quantization(
    path: Path,
) -> tuple[tuple[QuantizedTensor, ...], bool, dict[str, int]]:
    import onnx
    from onnx import numpy_helper

    from edgefleet.agent.runtime.errors import ModelLoadError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own types
        raise ModelLoadError(path, f"cannot parse the ONNX graph: {exc}") from exc
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    def array(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    found: dict[str, QuantizedTensor] = {}
    produced_by_q = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            produced_by_q.update(node.output)
    for node in graph.node:
        if node.op_type not in _QDQ or len(node.input) < 2:
            continue
        scale = array(node.input[1])
        zp = array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            continue
        axis_attr = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if node.op_type == "QuantizeLinear":
            name, role = node.input[0], "activation"
            dtype = zp.dtype.name if zp is not None else "uint8"
            shape: tuple[int | str | None, ...] = ()
        else:
            if node.input[0] in produced_by_q or node.input[0] not in inits:
                continue  # the activation was recorded at its QuantizeLinear
            name, role = node.input[0], "weight"
            weight = inits[name]
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(weight.data_type)).name
            shape = tuple(int(d) for d in weight.dims)
        found.setdefault(name, _qtensor(name=name, role=role, dtype=dtype, shape=shape,
                                        scale=scale, zp=zp, axis=axis_attr))

    dynamic = any(n.op_type == "DynamicQuantizeLinear" for n in graph.node)
    for name, init in inits.items():
        if name in found or not init.dims or not name.endswith("_quantized"):
            continue
        base = name.removesuffix("_quantized")
        scale = array(f"{base}_scale")
        if scale is None:
            continue
        zp = array(f"{base}_zero_point")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).name
        shape = tuple(int(d) for d in init.dims)
        found[name] = _qtensor(name=name, role="weight", dtype=dtype, shape=shape,
                               scale=scale, zp=zp, axis=1)

    weights: dict[str, int] = {}
    for init in graph.initializer:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).name
        weights[dtype] = weights.get(dtype, 0) + int(np.prod(init.dims, dtype=np.int64))
    return tuple(found.values()), dynamic, weights


def _qtensor(*, name: str, role: str, dtype: str, shape: tuple[int | str | None, ...],
             scale: np.ndarray, zp: np.ndarray | None, axis: int) -> QuantizedTensor:
    scales = tuple(float(s) for s in np.ravel(scale))
    zero_points = (tuple(int(z) for z in np.ravel(zp)) if zp is not None
                   else (0,) * len(scales))
    if len(scales) > 1 and shape:
        axis = axis % len(shape)
        if shape[axis] != len(scales):  # e.g. a [1, C] bias quantized along its C axis
            axis = next((i for i, d in enumerate(shape) if d == len(scales)), axis)
    return QuantizedTensor(name, role, dtype, shape, scales, zero_points,
                           axis if len(scales) > 1 else None)


# -- TFLite ----------------------------------------------------------------------------


def _tflite_quantization(
    path: Path,
) -> tuple[tuple[QuantizedTensor, ...], bool, dict[str, int]]:
    from edgefleet.agent.runtime.errors import ModelLoadError

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the documented fallback runtime
        from tflite_runtime.interpreter import Interpreter
    try:
        interpreter = Interpreter(model_path=str(path))
        details = interpreter.get_tensor_details()
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError
        raise ModelLoadError(path, f"LiteRT cannot read it: {exc}") from exc
    tensors: list[QuantizedTensor] = []
    weights: dict[str, int] = {}
    io_names = {d["index"] for d in interpreter.get_input_details()}
    for d in details:
        params = d.get("quantization_parameters") or {}
        scales = np.asarray(params.get("scales", ()), dtype=np.float64)
        dtype = np.dtype(d["dtype"]).name
        shape = tuple(int(s) for s in d["shape"])
        is_const = _is_constant(interpreter, d["index"]) and d["index"] not in io_names
        if is_const:
            weights[dtype] = weights.get(dtype, 0) + int(np.prod(shape, dtype=np.int64))
        if scales.size == 0:
            continue
        zps = np.asarray(params.get("zero_points", ()), dtype=np.int64)
        if zps.size != scales.size:
            zps = np.zeros(scales.size, dtype=np.int64)
        tensors.append(QuantizedTensor(
            name=str(d["name"]),
            role="weight" if is_const else "activation",
            dtype=dtype,
            shape=shape,
            scales=tuple(float(s) for s in scales),
            zero_points=tuple(int(z) for z in zps),
            axis=int(params.get("quantized_dimension", 0)) if scales.size > 1 else None,
        ))
    return tuple(tensors), False, weights


def _is_constant(interpreter: Any, index: int) -> bool:
    """A tensor with data before allocation is a constant (weights, biases)."""
    try:
        interpreter.tensor(index)()
    except ValueError:
        return False
    return True
