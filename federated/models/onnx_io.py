"""ONNX export and import for the trainable families, and weight write-back.

The exported graph is standard opset operators only, so onnxruntime, the agent runtime
and onnxruntime's quantizer all take it::

    input float32 [N, F] -> (MatMul W + Add b [-> Relu]) per layer -> logits
    logits -> Softmax(axis=-1) -> "probabilities" float32 [N, C]
    logits -> ArgMax(axis=1, keepdims=0) -> "label" int64 [N]

Initializer names are exactly the keys of ``model.weights()`` and the family is stored
in the model's ``metadata_props`` under :data:`FAMILY_KEY`, which is how ``from_onnx``
recognises its own graphs. ``write_weights_into`` works on any graph: it swaps
initializers by name and leaves nodes, inputs, outputs and metadata as they were, so the
server can put federated weights into the exact graph it deployed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from edgefleet.federated.models.base import (
    LAYOUTS,
    Family,
    OnnxFormatError,
    TrainableModel,
    WeightsError,
    check_tensor,
)

log = logging.getLogger(__name__)

FAMILY_KEY = "edgefleet.family"
FORMAT_KEY = "edgefleet.format"
FORMAT_VERSION = "1"
PRODUCER = "edgefleet.federated"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
_MIN_OPSET = 13  # Softmax over the last axis only (its meaning before 13 differs)
_BATCH = "N"


def to_onnx(model: TrainableModel, *, input_name: str = "input", opset: int = 17) -> bytes:
    """Export ``model`` as a serialized ONNX classifier graph.

    Args:
        model: a model from :func:`~edgefleet.federated.models.create` (or ``from_onnx``).
        input_name: name of the float32 [N, F] input.
        opset: default-domain opset (13 up to what the installed onnx knows).

    Returns:
        The model bytes; outputs ``"label"`` int64 [N] and ``"probabilities"`` float32
        [N, C]; initializer names equal ``model.weights()`` keys.

    Raises:
        OnnxFormatError: unknown family, unusable ``input_name`` or ``opset``.
    """
    try:
        family = Family(model.family)
    except ValueError:
        raise OnnxFormatError(f"cannot export model family {model.family!r}") from None
    if not (_MIN_OPSET <= opset <= onnx.defs.onnx_opset_version()):
        raise OnnxFormatError(
            f"opset must be in [{_MIN_OPSET}, {onnx.defs.onnx_opset_version()}], got {opset}"
        )
    weights = model.weights()
    reserved = set(weights) | {LABEL_OUTPUT, PROBABILITIES_OUTPUT}
    if not input_name or input_name in reserved or "." in input_name:
        raise OnnxFormatError(f"input name {input_name!r} is empty or clashes with the graph")
    nodes: list[onnx.NodeProto] = []
    h = input_name
    layers = LAYOUTS[family]
    for i, spec in enumerate(layers):
        w, b = f"{spec.name}.weight", f"{spec.name}.bias"
        last = i == len(layers) - 1
        pre = "logits" if last and not spec.relu else f"{spec.name}.preact"
        nodes.append(helper.make_node("MatMul", [h, w], [f"{spec.name}.matmul"],
                                      name=f"{spec.name}/MatMul"))
        nodes.append(helper.make_node("Add", [f"{spec.name}.matmul", b], [pre],
                                      name=f"{spec.name}/Add"))
        h = pre
        if spec.relu:
            h = "logits" if last else f"{spec.name}.relu"
            nodes.append(helper.make_node("Relu", [pre], [h], name=f"{spec.name}/Relu"))
    nodes.append(helper.make_node("Softmax", [h], [PROBABILITIES_OUTPUT], axis=-1,
                                  name="Softmax"))
    nodes.append(helper.make_node("ArgMax", [h], [LABEL_OUTPUT], axis=1, keepdims=0,
                                  name="ArgMax"))
    graph = helper.make_graph(
        nodes,
        f"edgefleet_{family.value}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                       [_BATCH, model.n_features])],
        [
            helper.make_tensor_value_info(LABEL_OUTPUT, TensorProto.INT64, [_BATCH]),
            helper.make_tensor_value_info(PROBABILITIES_OUTPUT, TensorProto.FLOAT,
                                          [_BATCH, model.n_classes]),
        ],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        graph,
        producer_name=PRODUCER,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    helper.set_model_props(proto, {FAMILY_KEY: family.value, FORMAT_KEY: FORMAT_VERSION})
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def from_onnx(data: bytes) -> TrainableModel:
    """Rebuild a model from a graph made by :func:`to_onnx` (weights from initializers).

    Raises:
        OnnxFormatError: not ONNX, no ``edgefleet.family`` metadata, an unknown family,
            or initializers that are not exactly that family's weights.
        WeightsError: an initializer of the wrong dtype, shape or with NaN/inf values.
    """
    from edgefleet.federated.models import create

    proto = _parse(data)
    meta = {p.key: p.value for p in proto.metadata_props}
    if FAMILY_KEY not in meta:
        raise OnnxFormatError(f"not a graph built by to_onnx: no {FAMILY_KEY!r} metadata")
    try:
        family = Family(meta[FAMILY_KEY])
    except ValueError:
        raise OnnxFormatError(f"unknown model family {meta[FAMILY_KEY]!r} in the graph") from None
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    layers = LAYOUTS[family]
    expected = {f"{s.name}.{part}" for s in layers for part in ("weight", "bias")}
    if set(inits) != expected:
        raise OnnxFormatError(
            f"the {family.value} graph's initializers {sorted(inits)} are not the expected "
            f"{sorted(expected)}"
        )
    sizes = []
    for spec in layers:
        w = inits[f"{spec.name}.weight"]
        if w.ndim != 2:
            raise OnnxFormatError(f"initializer {spec.name}.weight has rank {w.ndim}, not 2")
        sizes.append(w.shape)
    n_features, n_classes = sizes[0][0], sizes[-1][1]
    hidden = sizes[0][1] if family is Family.MLP else 1
    try:
        model = create(family.value, n_features, n_classes, hidden=hidden)
    except ValueError as exc:
        raise OnnxFormatError(f"the graph's sizes are unusable: {exc}") from exc
    model.set_weights(inits)
    return model


def write_weights_into(onnx_bytes: bytes, weights: Mapping[str, np.ndarray]) -> bytes:
    """Replace initializers of an existing graph by name; everything else stays as it was.

    All weights are checked before any is written: each name must be an initializer of
    the graph's main graph, with the same dtype and shape, and finite values. Only the
    given initializers change (a partial update is allowed).

    Raises:
        OnnxFormatError: ``onnx_bytes`` is not an ONNX model.
        WeightsError: (a ValueError) no weights, an unknown name, an initializer stored
            as external data, or a dtype/shape mismatch or NaN/inf; names the key.
    """
    proto = _parse(onnx_bytes)
    if not weights:
        raise WeightsError("write_weights_into: no weights given")
    by_name = {t.name: t for t in proto.graph.initializer}
    checked: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        target = by_name.get(name)
        if target is None:
            known = sorted(by_name)
            raise WeightsError(
                f"write_weights_into: the graph has no initializer {name!r}; it has "
                f"{known[:20]}{' ...' if len(known) > 20 else ''}"
            )
        if target.data_location == TensorProto.EXTERNAL:
            raise WeightsError(
                f"write_weights_into: initializer {name!r} is stored as external data"
            )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(target.data_type))
        checked[name] = check_tensor(name, value, tuple(target.dims), dtype,
                                     "write_weights_into")
    for name, value in checked.items():
        by_name[name].CopyFrom(numpy_helper.from_array(value, name))
    log.debug("wrote %d initializer(s) into graph %r", len(checked), proto.graph.name)
    return proto.SerializeToString()


def _parse(data: bytes) -> onnx.ModelProto:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise OnnxFormatError(f"expected ONNX model bytes, got {type(data).__name__}")
    try:
        proto = onnx.load_from_string(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxFormatError(f"not an ONNX model: {exc}") from exc
    if not proto.graph.node:
        raise OnnxFormatError("not an ONNX model: the graph has no nodes")
    return proto
