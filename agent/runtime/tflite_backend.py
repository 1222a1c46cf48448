"""TFLite models on LiteRT (``ai_edge_litert``), with ``tflite_runtime`` as a fallback.

The interpreter is built from the file's bytes, so the file is read once. A TFLite
interpreter is not thread-safe: every call holds the runner's lock. Models with a
dynamic batch dimension (``shape_signature`` -1) are resized when the batch size
changes; the last shape per input is cached so a steady batch size costs nothing.

Before the bytes reach the interpreter they are checked against the flatbuffer
structure (``_check_flatbuffer``): LiteRT verifies the model too, but a refusal here
gives a clearer reason and keeps malformed offsets away from native code.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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

try:  # LiteRT is the supported runtime; tflite_runtime only where LiteRT has no wheel.
    from ai_edge_litert.interpreter import Interpreter as _Interpreter
except ImportError:  # pragma: no cover - exercised only on installs without LiteRT
    from tflite_runtime.interpreter import Interpreter as _Interpreter

_OBJECT = np.dtype(object)


def _dtype(value: Any) -> np.dtype[Any]:
    try:
        dtype = np.dtype(value)
    except TypeError:
        return _OBJECT
    return _OBJECT if dtype.kind in "SUO" else dtype


def _quantization(details: dict[str, Any]) -> Quantization | None:
    params = details.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", ()), dtype=np.float64).ravel()
    zeros = np.asarray(params.get("zero_points", ()), dtype=np.int64).ravel()
    if scales.size == 0 or not np.any(scales):
        return None
    if zeros.size == 0:
        zeros = np.zeros(scales.size, dtype=np.int64)
    elif zeros.size == 1 and scales.size > 1:
        zeros = np.full(scales.size, zeros[0], dtype=np.int64)
    if scales.size == 1:
        return Quantization((float(scales[0]),), (int(zeros[0]),))
    return Quantization(
        tuple(float(s) for s in scales),
        tuple(int(z) for z in zeros),
        axis=int(params.get("quantized_dimension", 0)),
    )


def _spec(details: dict[str, Any], position: int, kind: str) -> TensorSpec:
    signature = details.get("shape_signature")
    dims = signature if signature is not None and len(signature) else details["shape"]
    shape: tuple[Dim, ...] = tuple(None if int(d) < 0 else int(d) for d in dims)
    dtype = _dtype(details["dtype"])
    quant = _quantization(details) if dtype.kind in "iu" else None
    name = details.get("name") or f"{kind}_{position}"
    return TensorSpec(name=name, shape=shape, dtype=dtype, quantization=quant)


class TFLiteRunner(ModelRunner):
    """Runs a TFLite model with the LiteRT interpreter. Build with ``load_model``."""

    framework = Framework.TFLITE

    def __init__(self, path: Path, options: RunnerOptions, size_bytes: int, data: bytes) -> None:
        """Raises:
        ModelLoadError: the flatbuffer is malformed or truncated, or the interpreter
            refuses the model (unsupported operator, invalid tensors, ...).
        """
        reason = _check_flatbuffer(data)
        if reason is not None:
            raise ModelLoadError(path, reason)
        try:
            interpreter = _Interpreter(model_content=data, num_threads=options.intra_op_threads)
            interpreter.allocate_tensors()
            in_details = interpreter.get_input_details()
            out_details = interpreter.get_output_details()
        except Exception as exc:  # the interpreter raises ValueError or RuntimeError
            raise ModelLoadError(path, f"LiteRT cannot load it: {_first_line(exc)}") from exc
        try:
            signature = Signature(
                inputs=tuple(_spec(d, i, "input") for i, d in enumerate(in_details)),
                outputs=tuple(_spec(d, i, "output") for i, d in enumerate(out_details)),
            )
            super().__init__(path, signature, options, size_bytes)
        except ValueError as exc:  # e.g. inconsistent quantization parameters
            raise ModelLoadError(path, f"invalid tensor description: {exc}") from exc
        self._data = data
        self._interpreter: Any = interpreter
        self._lock = threading.Lock()
        self._in_index = tuple(int(d["index"]) for d in in_details)
        self._out_index = tuple(int(d["index"]) for d in out_details)
        self._shapes: list[tuple[int, ...]] = [
            tuple(int(x) for x in d["shape"]) for d in in_details
        ]
        self._set = interpreter.set_tensor
        self._invoke = interpreter.invoke
        self._get = interpreter.get_tensor
        self._operators: list[str] | None = None
        self._closed = False
        log.debug("loaded TFLite model %s with %d input(s)", path, len(in_details))

    def _run(self, arrays: list[np.ndarray]) -> Sequence[np.ndarray]:
        with self._lock:
            if self._closed:
                raise InferenceError(self.path, "the runner is closed")
            try:
                shapes = self._shapes
                resized = False
                for i, array in enumerate(arrays):
                    if array.shape != shapes[i]:
                        self._interpreter.resize_tensor_input(
                            self._in_index[i], array.shape, strict=True
                        )
                        shapes[i] = array.shape
                        resized = True
                if resized:
                    self._interpreter.allocate_tensors()
                set_tensor = self._set
                for index, array in zip(self._in_index, arrays, strict=True):
                    set_tensor(index, array)
                self._invoke()
                get = self._get
                return [get(index) for index in self._out_index]
            except Exception as exc:
                # A failed resize leaves the interpreter's shapes unknown: resize next time.
                self._shapes = [() for _ in self._shapes]
                raise InferenceError(self.path, _first_line(exc)) from exc

    def operators(self) -> list[str]:
        """Builtin operator names (e.g. ``FULLY_CONNECTED``) or custom op codes, in order
        of first use across all subgraphs.

        Raises:
            ModelLoadError: the flatbuffer's operator table cannot be read.
        """
        if self._operators is None:
            try:
                self._operators = _tflite_operators(self._data)
            except Exception as exc:  # a damaged table the interpreter did not need
                raise ModelLoadError(
                    self.path, f"cannot read the operator table: {_first_line(exc)}"
                ) from exc
        return list(self._operators)

    def close(self) -> None:
        """Drop the interpreter; later ``predict`` calls raise InferenceError."""
        with self._lock:
            self._closed = True
            self._interpreter = None
            self._set = self._invoke = self._get = _closed


def _closed(*_: Any) -> Any:
    raise RuntimeError("the runner is closed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema  # large module, rarely needed

    ops = schema.BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


def _tflite_operators(data: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    names = _builtin_names()
    model = schema.Model.GetRootAs(data, 0)
    codes: list[str] = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append(custom.decode("utf-8", "replace") if custom else "CUSTOM")
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    found: dict[str, None] = {}
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for o in range(sub.OperatorsLength()):
            index = sub.Operators(o).OpcodeIndex()
            found.setdefault(codes[index] if index < len(codes) else f"OPCODE_{index}", None)
    return list(found)


# -- structural check ----------------------------------------------------------------------
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")


def _check_flatbuffer(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed TFLite model root, or None if it looks sound.

    Checks the root table, its vtable and the vectors it points to (operator codes,
    subgraphs, buffers) stay inside the file: the usual damage (truncation, a cut
    download) is caught here with a plain reason.
    """
    size = len(data)
    if size < 8:
        return "truncated: shorter than a flatbuffer header"
    try:
        root = _U32.unpack_from(data, 0)[0]
        if root + 4 > size:
            return f"truncated: the root table at byte {root} is past the end ({size} bytes)"
        vtable = root - _I32.unpack_from(data, root)[0]
        if vtable < 0 or vtable + 4 > size:
            return "malformed flatbuffer: the root vtable is outside the file"
        vt_size = _U16.unpack_from(data, vtable)[0]
        table_size = _U16.unpack_from(data, vtable + 2)[0]
        if vt_size < 4 or vtable + vt_size > size or root + table_size > size:
            return "truncated: the model table runs past the end of the file"
        # Model fields: 0 version, 1 operator_codes, 2 subgraphs, 3 description, 4 buffers.
        for field, label, required in ((1, "operator codes", False), (2, "subgraphs", True),
                                       (4, "buffers", False)):
            slot = 4 + 2 * field
            offset = _U16.unpack_from(data, vtable + slot)[0] if slot + 2 <= vt_size else 0
            if offset == 0:
                if required:
                    return f"not a usable TFLite model: it has no {label}"
                continue
            where = root + offset
            if where + 4 > size:
                return f"truncated: the {label} reference is past the end of the file"
            vector = where + _U32.unpack_from(data, where)[0]
            if vector + 4 > size:
                return f"truncated: the {label} are past the end of the file"
            count = _U32.unpack_from(data, vector)[0]
            if vector + 4 + 4 * count > size:
                return f"truncated: the {label} run past the end of the file"
            for k in range(count):  # each element is an offset to a table
                elem = vector + 4 + 4 * k
                target = elem + _U32.unpack_from(data, elem)[0]
                if target + 4 > size:
                    return f"truncated: {label} entry {k} is past the end of the file"
    except struct.error:
        return "malformed flatbuffer"
    return None
