"""Read what a model file is: framework, input/output signature, quantization.

The file is opened with the agent's own runtime (``edgefleet.agent.runtime.load_model``),
so the server records exactly the signature a device will see, and a file the agent
cannot load is refused at upload. The framework comes from the content, never from a
file name. Quantization is read from the model itself: quantize/dequantize operators in
an ONNX graph, int8/uint8/float16 tensors in a TFLite flatbuffer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from ai_edge_litert.interpreter import Interpreter

from edgefleet.agent.runtime import load_model
from edgefleet.agent.runtime.errors import ModelLoadError
from edgefleet.fleet_server.registry.errors import InvalidArtifactError

log = logging.getLogger(__name__)

_ONNX_QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
    }
)


class Framework(StrEnum):
    """Model file formats the registry accepts."""

    ONNX = "onnx"
    TFLITE = "tflite"


class Quantization(StrEnum):
    """How a model's weights / activations are quantized (coarse, for filtering)."""

    NONE = "none"
    FLOAT16 = "float16"
    INT8 = "int8"
    UINT8 = "uint8"
    DYNAMIC_INT8 = "dynamic-int8"


@dataclass(frozen=True)
class ModelInfo:
    """What inspection found in a model file."""

    framework: Framework
    quantization: Quantization
    signature: dict[str, list[dict[str, Any]]]  # Signature.to_dict(): {"inputs", "outputs"}


def inspect_model(path: Path) -> ModelInfo:
    """Inspect the model file at ``path`` by loading it with the agent runtime.

    Raises:
        InvalidArtifactError: the agent runtime cannot load the file (not a model,
            truncated, unsupported, refused by onnxruntime / LiteRT).
    """
    try:
        with load_model(path) as runner:
            framework = Framework(runner.framework.value)
            signature: dict[str, list[dict[str, Any]]] = runner.signature.to_dict()
    except ModelLoadError as e:
        raise InvalidArtifactError(f"not a loadable model: {_scrub(e, path)}") from e
    except ImportError as e:  # a runtime backend is not installed on this server
        raise InvalidArtifactError(
            f"this server cannot load such models: {_scrub(e, path)}") from e
    try:
        if framework is Framework.ONNX:
            quant = _onnx_quantization(path)
        else:
            quant = _tflite_quantization(path)
    except Exception as e:  # foreign parsers raise anything; the runtime already loaded it
        raise InvalidArtifactError(
            f"cannot read the {framework.value} model: {_scrub(e, path)}") from e
    return ModelInfo(framework, quant, signature)


def _scrub(error: BaseException, path: Path) -> str:
    """``error``'s text without the server's file system paths (it goes to the client)."""
    text = str(error)
    for where in sorted({str(path.resolve()), str(path), str(path.parent.resolve()),
                         str(path.parent), path.name}, key=len, reverse=True):
        text = text.replace(where, "<upload>")
    return text


def _onnx_quantization(path: Path) -> Quantization:
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    init_types = {i.data_type for i in model.graph.initializer}
    if "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops:
        return Quantization.DYNAMIC_INT8
    if ops & _ONNX_QUANT_OPS:
        return Quantization.UINT8 if onnx.TensorProto.UINT8 in init_types else Quantization.INT8
    if onnx.TensorProto.FLOAT16 in init_types:
        return Quantization.FLOAT16
    return Quantization.NONE


def _tflite_quantization(path: Path) -> Quantization:
    interp = Interpreter(model_path=str(path))
    dtypes = {np.dtype(d["dtype"]) for d in interp.get_tensor_details()}
    if np.dtype(np.int8) in dtypes:
        return Quantization.INT8
    if np.dtype(np.uint8) in dtypes:
        return Quantization.UINT8
    if np.dtype(np.float16) in dtypes:
        return Quantization.FLOAT16
    return Quantization.NONE
