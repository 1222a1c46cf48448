"""ONNX models on onnxruntime (CPUExecutionProvider).

Integer inputs read through ``DequantizeLinear`` and integer outputs written by
``QuantizeLinear`` (constant scale and zero point) get those parameters in the
signature, so such models take and return real values like quantized TFLite models.

``InferenceSession.run`` is thread-safe, so this runner takes no lock: several threads
may call ``predict`` on one runner concurrently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgefleet.agent.runtime.base import ModelRunner
from edgefleet.agent.runtime.errors import InferenceError, ModelLoadError
from edgefleet.agent.runtime.signature import (
    Dim,
    Framework,
    Quantization,
    RunnerOptions,
    Signature,
    TensorSpec,
)

log = logging.getLogger(__name__)

_ONNX_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}
_OBJECT = np.dtype(object)  # strings and non-tensor values (sequences, maps)


def _spec(arg: Any) -> TensorSpec:
    shape: tuple[Dim, ...] = ()
    if arg.type.startswith("tensor("):
        shape = tuple(d if isinstance(d, str) or d is None else int(d) for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_ONNX_TYPES.get(arg.type, _OBJECT))


def _session_options(options: RunnerOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    if options.intra_op_threads is not None:
        so.intra_op_num_threads = options.intra_op_threads
    if options.inter_op_threads is not None:
        so.inter_op_num_threads = options.inter_op_threads
        if options.inter_op_threads > 1:
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.log_severity_level = 3  # errors only: load failures are reported as exceptions
    return so


class OnnxRunner(ModelRunner):
    """Runs an ONNX model with onnxruntime. Build with ``load_model``."""

    framework = Framework.ONNX

    def __init__(self, path: Path, options: RunnerOptions, size_bytes: int) -> None:
        """Raises:
        ModelLoadError: onnxruntime refused the model (invalid graph, opset or
            operator it does not support, ...).
        """
        try:
            session = ort.InferenceSession(
                str(path), sess_options=_session_options(options),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ModelLoadError(path, f"onnxruntime cannot load it: {_first_line(exc)}") from exc
        signature = Signature(
            inputs=tuple(_spec(a) for a in session.get_inputs()),
            outputs=tuple(_spec(a) for a in session.get_outputs()),
        )
        if any(s.dtype in _QUANT_TYPES for s in (*signature.inputs, *signature.outputs)):
            signature = _with_io_quantization(path, signature)
        try:
            super().__init__(path, signature, options, size_bytes)
        except ValueError as exc:  # e.g. a per-channel axis outside the tensor's rank
            raise ModelLoadError(path, f"invalid tensor description: {exc}") from exc
        self._session: ort.InferenceSession | None = session
        self._run_session = session.run
        self._output_list = list(self._output_names)
        self._non_tensor_outputs = any(s.dtype == _OBJECT for s in signature.outputs)
        self._operators: list[str] | None = None
        log.debug("loaded ONNX model %s with %d input(s)", path, len(signature.inputs))

    def _run(self, arrays: list[np.ndarray]) -> Sequence[np.ndarray]:
        try:
            outputs = self._run_session(
                self._output_list, dict(zip(self._input_names, arrays, strict=True))
            )
        except Exception as exc:
            if self._session is None:
                raise InferenceError(self.path, "the runner is closed") from None
            raise InferenceError(self.path, _first_line(exc)) from exc
        if self._non_tensor_outputs:
            # e.g. scikit-learn's ZipMap output: a list of dicts, one per sample.
            return [o if isinstance(o, np.ndarray) else _object_array(o) for o in outputs]
        return outputs

    def operators(self) -> list[str]:
        """ONNX op types (``domain:Op`` outside the default domain), subgraphs included.

        Raises:
            ModelLoadError: the file can no longer be read or parsed.
        """
        if self._operators is None:
            self._operators = _onnx_operators(self.path)
        return list(self._operators)

    def close(self) -> None:
        """Release the session; later ``predict`` calls raise InferenceError."""
        self._session = None
        self._run_session = _closed


def _closed(*_: Any) -> Any:
    raise RuntimeError("closed")


def _object_array(value: Any) -> np.ndarray:
    out = np.empty(len(value) if isinstance(value, list) else 1, dtype=object)
    if isinstance(value, list):
        out[:] = value
    else:
        out[0] = value
    return out


_QUANT_TYPES = (np.dtype(np.int8), np.dtype(np.uint8))


def _with_io_quantization(path: Path, signature: Signature) -> Signature:
    """Attach quantization to int8/uint8 inputs read only by ``DequantizeLinear`` and
    outputs written by ``QuantizeLinear``, when their scale and zero point are constants.

    ONNX has no per-tensor quantization field: a QDQ boundary is how a model says its
    integer I/O is quantized. Anything unexpected leaves the signature as it was (the
    model still runs with raw integers).
    """
    import onnx  # parsed only for models with integer I/O
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
        consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
                consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    except Exception as exc:  # an unreadable graph: keep the plain signature
        log.debug("no QDQ I/O detection for %s: %s", path, exc)
        return signature
    consumers: dict[str, list[Any]] = {}
    producers: dict[str, Any] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node

    def params(node: Any) -> Quantization | None:
        if node.domain not in ("", "ai.onnx") or node.input[1] not in consts:
            return None
        scale = np.asarray(consts[node.input[1]], dtype=np.float64).ravel()
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zp_name is not None and zp_name not in consts:
            return None
        zero = (np.asarray(consts[zp_name], dtype=np.int64).ravel() if zp_name
                else np.zeros(scale.size, dtype=np.int64))
        if scale.size == 0 or zero.size != scale.size:
            return None
        if scale.size == 1:
            return Quantization((float(scale[0]),), (int(zero[0]),))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        return Quantization(tuple(map(float, scale)), tuple(map(int, zero)), axis=int(axis))

    def for_input(spec: TensorSpec) -> TensorSpec:
        nodes = consumers.get(spec.name, [])
        if spec.dtype not in _QUANT_TYPES or not nodes:
            return spec
        found = {params(n) if n.op_type == "DequantizeLinear" and n.input[0] == spec.name
                 else None for n in nodes}
        q = found.pop() if len(found) == 1 else None
        return spec if q is None else replace(spec, quantization=q)

    def for_output(spec: TensorSpec) -> TensorSpec:
        node = producers.get(spec.name)
        if spec.dtype not in _QUANT_TYPES or node is None or node.op_type != "QuantizeLinear":
            return spec
        q = params(node)
        return spec if q is None else replace(spec, quantization=q)

    try:
        return Signature(
            inputs=tuple(for_input(s) for s in signature.inputs),
            outputs=tuple(for_output(s) for s in signature.outputs),
        )
    except ValueError as exc:  # inconsistent parameters: keep the plain signature
        log.debug("ignoring QDQ parameters of %s: %s", path, exc)
        return signature


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def _onnx_operators(path: Path) -> list[str]:
    import onnx  # only for inspection: running needs no parsed graph

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(path, f"cannot parse the ONNX graph: {_first_line(exc)}") from exc
    found: dict[str, None] = {}

    def walk(graph: Any) -> None:
        for node in graph.node:
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            found.setdefault(f"{domain}:{node.op_type}" if domain else node.op_type, None)
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return list(found)
