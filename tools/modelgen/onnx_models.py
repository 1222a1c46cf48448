"""Small, real ONNX models built with ``onnx.helper`` from numpy weights.

Every builder writes the file at ``path`` (parents created) and returns a
:class:`~edgefleet.tools.modelgen.spec.ModelSpec` whose ``reference`` is a numpy forward
pass. Files use opset :data:`OPSET` and IR version :data:`IR_VERSION`, which onnxruntime
1.18+ loads. With ``dynamic_batch=True`` the batch dimension is the symbol ``"N"``.

* ``mlp(path, sizes=(16, 32, 4), *, seed=0, softmax=True, dynamic_batch=True,
  weight_dtype="float32", weights=None)``: MatMul+Add(+Relu) per layer, optional
  Softmax. Input ``"input"`` float32 [N, sizes[0]]; output ``"probabilities"`` (softmax)
  or ``"logits"``. ``weight_dtype="float16"`` stores float16 initializers, each followed
  by a Cast to float32 (float32 I/O). The benchmark model is
  ``mlp(path, sizes=(256, 1024, 10))``.
* ``cnn_nchw(path, input_shape=(1, 8, 8), *, channels=4, num_classes=3, ...)``:
  Conv 3x3 (pad 1) + Relu + GlobalAveragePool + Flatten + Gemm (+ Softmax);
  input ``"image"`` float32 [N, C, H, W].
* ``cnn_nhwc(path, input_shape=(8, 8, 1), ...)``: the same network behind a Transpose, so
  the input ``"image"`` is [N, H, W, C] as images usually come.
* ``multi_io(path, *, features=8, hidden=16, classes=4, ...)``: inputs ``"features"``
  [N, 8] and ``"bias"`` [N, 4]; outputs ``"scores"`` = embedding @ W2 + b2 + bias and
  ``"embedding"`` = relu(features @ W1 + b1).
* ``int_input_model(path, *, vocab=20, seq_len=6, embed_dim=8, classes=3,
  index_dtype="int64", ...)``: input ``"token_ids"`` int64 (or int32) [N, seq_len] ->
  Gather from an embedding table -> ReduceMean over the sequence -> MatMul+Add ->
  output ``"logits"`` float32 [N, classes].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.tools.modelgen.layers import (
    Dense,
    check_mlp_weights,
    conv2d_nchw,
    init_dense,
    init_mlp,
    mlp_forward,
    relu,
)
from edgefleet.tools.modelgen.layers import (
    softmax as np_softmax,
)
from edgefleet.tools.modelgen.spec import (
    Arrays,
    Framework,
    ModelGenError,
    ModelSpec,
    Precision,
    QuantParams,
    TensorInfo,
)

OPSET = 17
IR_VERSION = 8
PRODUCER = "edgefleet.modelgen"
BATCH_SYMBOL = "N"

_FLOAT_ATOL = 1e-4  # float32 runtime vs float64 numpy on these small networks


def _batch_dim(dynamic_batch: bool) -> str | int:
    return BATCH_SYMBOL if dynamic_batch else 1


def _spec_dim(dynamic_batch: bool) -> int | None:
    return None if dynamic_batch else 1


def _value_info(name: str, elem: int, shape: Sequence[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


class _Graph:
    """Collects nodes and initializers; ``weight`` handles the float16 storage trick."""

    def __init__(self, weight_dtype: np.dtype) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.weight_dtype = weight_dtype

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
        """Add a float weight; return the float32 tensor name and the stored values."""
        stored = np.asarray(value).astype(self.weight_dtype)
        if self.weight_dtype == np.float32:
            return self.const(name, stored), stored
        self.const(f"{name}_f16", stored)
        self.node("Cast", [f"{name}_f16"], [name], to=TensorProto.FLOAT)
        return name, stored.astype(np.float32)

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> None:
        name = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def dense(self, x: str, w: np.ndarray, b: np.ndarray, prefix: str, out: str) -> Dense:
        w_name, w_stored = self.weight(f"{prefix}.weight", w)
        b_name, b_stored = self.weight(f"{prefix}.bias", b)
        self.node("MatMul", [x, w_name], [f"{prefix}.matmul"])
        self.node("Add", [f"{prefix}.matmul", b_name], [out])
        return w_stored, b_stored

    def save(
        self,
        path: Path,
        name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
    ) -> None:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            producer_name=PRODUCER,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model, full_check=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))


def _weight_dtype(weight_dtype: npt.DTypeLike) -> tuple[np.dtype, Precision]:
    dt = np.dtype(weight_dtype)
    if dt == np.float32:
        return dt, Precision.FLOAT32
    if dt == np.float16:
        return dt, Precision.FLOAT16
    raise ModelGenError(f"weight_dtype must be float32 or float16, got {dt}")


def mlp(
    path: str | Path,
    sizes: Sequence[int] = (16, 32, 4),
    *,
    seed: int = 0,
    softmax: bool = True,
    dynamic_batch: bool = True,
    weight_dtype: npt.DTypeLike = np.float32,
    weights: Sequence[Dense] | None = None,
    input_range: tuple[float, float] = (-1.0, 1.0),
) -> ModelSpec:
    """Write a MatMul+Add(+Relu) MLP; ``weights`` (W [in, out], b [out]) override ``sizes``.

    ``input_range`` is only recorded in the spec (for sample data and calibration).

    Raises:
        ModelGenError: invalid sizes, weights or weight dtype.
    """
    path = Path(path)
    wdt, precision = _weight_dtype(weight_dtype)
    layers = check_mlp_weights(weights) if weights is not None else init_mlp(sizes, seed)
    g = _Graph(wdt)
    n = _batch_dim(dynamic_batch)
    out_name = "probabilities" if softmax else "logits"
    h = "input"
    stored: list[Dense] = []
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        pre = f"dense{i}.out" if not last else ("logits_raw" if softmax else out_name)
        stored.append(g.dense(h, w, b, f"dense{i}", pre))
        if not last:
            g.node("Relu", [pre], [f"relu{i}.out"])
            h = f"relu{i}.out"
        elif softmax:
            g.node("Softmax", [pre], [out_name], axis=-1)
    n_in, n_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    g.save(
        path,
        "mlp",
        [_value_info("input", TensorProto.FLOAT, [n, n_in])],
        [_value_info(out_name, TensorProto.FLOAT, [n, n_out])],
    )

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        return {out_name: mlp_forward(stored, inputs["input"], apply_softmax=softmax)}

    b = _spec_dim(dynamic_batch)
    return ModelSpec(
        path=path,
        framework=Framework.ONNX,
        precision=precision,
        inputs=(TensorInfo("input", (b, n_in), "float32", value_range=input_range),),
        outputs=(TensorInfo(out_name, (b, n_out), "float32"),),
        weights=_named_dense(stored),
        forward=forward,
        float_forward=forward,
        atol=_FLOAT_ATOL,
        float_atol=_FLOAT_ATOL,
    )


def _named_dense(layers: Sequence[Dense], prefix: str = "dense") -> dict[str, np.ndarray]:
    named: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(layers):
        named[f"{prefix}{i}.weight"] = w
        named[f"{prefix}{i}.bias"] = b
    return named


def _cnn(
    path: Path,
    chw: tuple[int, int, int],
    *,
    nhwc: bool,
    channels: int,
    num_classes: int,
    seed: int,
    softmax: bool,
    dynamic_batch: bool,
) -> ModelSpec:
    c, h, w = chw
    if min(c, h, w, channels, num_classes) < 1:
        raise ModelGenError(f"invalid CNN dimensions {chw}, {channels}, {num_classes}")
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0.0, np.sqrt(2.0 / (c * 9)), size=(channels, c, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0.0, 0.1, size=(channels,)).astype(np.float32)
    fc_w, fc_b = init_dense(rng, channels, num_classes)
    g = _Graph(np.dtype(np.float32))
    n = _batch_dim(dynamic_batch)
    x = "image"
    if nhwc:
        g.node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2])
        x = "image_nchw"
    g.const("conv0.weight", conv_w)
    g.const("conv0.bias", conv_b)
    g.node("Conv", [x, "conv0.weight", "conv0.bias"], ["conv0.out"],
           kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    g.node("Relu", ["conv0.out"], ["relu0.out"])
    g.node("GlobalAveragePool", ["relu0.out"], ["gap.out"])
    g.node("Flatten", ["gap.out"], ["flat.out"], axis=1)
    g.const("fc.weight", fc_w)
    g.const("fc.bias", fc_b)
    out_name = "probabilities" if softmax else "logits"
    fc_out = "logits_raw" if softmax else out_name
    g.node("Gemm", ["flat.out", "fc.weight", "fc.bias"], [fc_out])
    if softmax:
        g.node("Softmax", [fc_out], [out_name], axis=-1)
    in_shape: list[str | int] = [n, h, w, c] if nhwc else [n, c, h, w]
    g.save(
        path,
        "cnn_nhwc" if nhwc else "cnn_nchw",
        [_value_info("image", TensorProto.FLOAT, in_shape)],
        [_value_info(out_name, TensorProto.FLOAT, [n, num_classes])],
    )

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        img = np.asarray(inputs["image"], dtype=np.float64)
        if nhwc:
            img = img.transpose(0, 3, 1, 2)
        feat = relu(conv2d_nchw(img, conv_w, conv_b, pad=1)).mean(axis=(2, 3))
        logits = feat @ fc_w.astype(np.float64) + fc_b
        y = np_softmax(logits) if softmax else logits
        return {out_name: y.astype(np.float32)}

    b = _spec_dim(dynamic_batch)
    spec_shape = (b, h, w, c) if nhwc else (b, c, h, w)
    return ModelSpec(
        path=path,
        framework=Framework.ONNX,
        precision=Precision.FLOAT32,
        inputs=(TensorInfo("image", spec_shape, "float32", value_range=(0.0, 1.0)),),
        outputs=(TensorInfo(out_name, (b, num_classes), "float32"),),
        weights={"conv0.weight": conv_w, "conv0.bias": conv_b, "fc.weight": fc_w,
                 "fc.bias": fc_b},
        forward=forward,
        float_forward=forward,
        atol=_FLOAT_ATOL,
        float_atol=_FLOAT_ATOL,
    )


def cnn_nchw(
    path: str | Path,
    input_shape: tuple[int, int, int] = (1, 8, 8),
    *,
    channels: int = 4,
    num_classes: int = 3,
    seed: int = 0,
    softmax: bool = True,
    dynamic_batch: bool = True,
) -> ModelSpec:
    """Write a Conv+Relu+GlobalAveragePool+Gemm classifier; ``input_shape`` is (C, H, W).

    Raises:
        ModelGenError: a non-positive dimension.
    """
    return _cnn(Path(path), input_shape, nhwc=False, channels=channels,
                num_classes=num_classes, seed=seed, softmax=softmax,
                dynamic_batch=dynamic_batch)


def cnn_nhwc(
    path: str | Path,
    input_shape: tuple[int, int, int] = (8, 8, 1),
    *,
    channels: int = 4,
    num_classes: int = 3,
    seed: int = 0,
    softmax: bool = True,
    dynamic_batch: bool = True,
) -> ModelSpec:
    """Like :func:`cnn_nchw` but the input is (H, W, C) image-like, transposed inside.

    Raises:
        ModelGenError: a non-positive dimension.
    """
    h, w, c = input_shape
    return _cnn(Path(path), (c, h, w), nhwc=True, channels=channels,
                num_classes=num_classes, seed=seed, softmax=softmax,
                dynamic_batch=dynamic_batch)


def multi_io(
    path: str | Path,
    *,
    features: int = 8,
    hidden: int = 16,
    classes: int = 4,
    seed: int = 0,
    dynamic_batch: bool = True,
) -> ModelSpec:
    """Two inputs (``features``, ``bias``), two outputs (``scores``, ``embedding``).

    Raises:
        ModelGenError: a non-positive size.
    """
    path = Path(path)
    (w1, b1), (w2, b2) = init_mlp((features, hidden, classes), seed)
    g = _Graph(np.dtype(np.float32))
    g.dense("features", w1, b1, "dense0", "dense0.out")
    g.node("Relu", ["dense0.out"], ["embedding"])
    g.dense("embedding", w2, b2, "dense1", "dense1.out")
    g.node("Add", ["dense1.out", "bias"], ["scores"])
    n = _batch_dim(dynamic_batch)
    g.save(
        path,
        "multi_io",
        [_value_info("features", TensorProto.FLOAT, [n, features]),
         _value_info("bias", TensorProto.FLOAT, [n, classes])],
        [_value_info("scores", TensorProto.FLOAT, [n, classes]),
         _value_info("embedding", TensorProto.FLOAT, [n, hidden])],
    )

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        emb = relu(np.asarray(inputs["features"], dtype=np.float64) @ w1 + b1)
        scores = emb @ w2 + b2 + np.asarray(inputs["bias"], dtype=np.float64)
        return {"scores": scores.astype(np.float32), "embedding": emb.astype(np.float32)}

    b = _spec_dim(dynamic_batch)
    return ModelSpec(
        path=path,
        framework=Framework.ONNX,
        precision=Precision.FLOAT32,
        inputs=(TensorInfo("features", (b, features), "float32"),
                TensorInfo("bias", (b, classes), "float32")),
        outputs=(TensorInfo("scores", (b, classes), "float32"),
                 TensorInfo("embedding", (b, hidden), "float32")),
        weights=_named_dense([(w1, b1), (w2, b2)]),
        forward=forward,
        float_forward=forward,
        atol=_FLOAT_ATOL,
        float_atol=_FLOAT_ATOL,
    )


def int_input_model(
    path: str | Path,
    *,
    vocab: int = 20,
    seq_len: int = 6,
    embed_dim: int = 8,
    classes: int = 3,
    index_dtype: npt.DTypeLike = np.int64,
    seed: int = 0,
    dynamic_batch: bool = True,
) -> ModelSpec:
    """An embedding-bag classifier whose input ``token_ids`` is int64 or int32.

    Raises:
        ModelGenError: ``index_dtype`` is not int32/int64 or a size is non-positive.
    """
    path = Path(path)
    idt = np.dtype(index_dtype)
    elem = {np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32}.get(idt)
    if elem is None:
        raise ModelGenError(f"index_dtype must be int32 or int64, got {idt}")
    if min(vocab, seq_len, embed_dim, classes) < 1:
        raise ModelGenError("vocab, seq_len, embed_dim and classes must be positive")
    rng = np.random.default_rng(seed)
    table = rng.normal(0.0, 1.0, size=(vocab, embed_dim)).astype(np.float32)
    w, b = init_dense(rng, embed_dim, classes)
    g = _Graph(np.dtype(np.float32))
    g.const("embedding.table", table)
    g.node("Gather", ["embedding.table", "token_ids"], ["gathered"], axis=0)
    g.node("ReduceMean", ["gathered"], ["pooled"], axes=[1], keepdims=0)
    g.dense("pooled", w, b, "dense0", "logits")
    n = _batch_dim(dynamic_batch)
    g.save(
        path,
        "int_input",
        [_value_info("token_ids", elem, [n, seq_len])],
        [_value_info("logits", TensorProto.FLOAT, [n, classes])],
    )

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        ids = np.asarray(inputs["token_ids"])
        pooled = table.astype(np.float64)[ids].mean(axis=1)
        return {"logits": (pooled @ w + b).astype(np.float32)}

    bd = _spec_dim(dynamic_batch)
    return ModelSpec(
        path=path,
        framework=Framework.ONNX,
        precision=Precision.FLOAT32,
        inputs=(TensorInfo("token_ids", (bd, seq_len), idt.name,
                           value_range=(0.0, float(vocab - 1))),),
        outputs=(TensorInfo("logits", (bd, classes), "float32"),),
        weights={"embedding.table": table, "dense0.weight": w, "dense0.bias": b},
        forward=forward,
        float_forward=forward,
        atol=_FLOAT_ATOL,
        float_atol=_FLOAT_ATOL,
    )


def mlp_int_io(
    path: str | Path,
    sizes: Sequence[int] = (16, 8, 4),
    *,
    io_dtype: str = "int8",
    seed: int = 0,
    dynamic_batch: bool = True,
    input_range: tuple[float, float] = (-1.0, 1.0),
) -> ModelSpec:
    """An MLP with integer I/O: DequantizeLinear at the input, QuantizeLinear at the output.

    The input ``"input"`` and output ``"logits"`` are ``io_dtype`` (int8 or uint8) with
    per-tensor parameters recorded in the spec; the network between is float32.
    ``reference`` takes and returns integers (atol 1 step: ONNX rounds half to even).

    Raises:
        ModelGenError: ``io_dtype`` is not int8/uint8, or invalid sizes.
    """
    path = Path(path)
    if io_dtype not in ("int8", "uint8"):
        raise ModelGenError(f"io_dtype must be int8 or uint8, got {io_dtype!r}")
    elem = TensorProto.INT8 if io_dtype == "int8" else TensorProto.UINT8
    offset = 0 if io_dtype == "int8" else 128
    layers = init_mlp(sizes, seed)
    lo, hi = input_range
    rng = np.random.default_rng(seed + 1)
    calib = mlp_forward(layers, rng.uniform(lo, hi, size=(256, sizes[0])), apply_softmax=False)
    in_scale = float(np.float32((hi - lo) / 255.0))
    q_in = QuantParams(in_scale, round(-128 - lo / in_scale) + offset)
    out_lo, out_hi = min(float(calib.min()), 0.0) * 1.1, max(float(calib.max()), 0.0) * 1.1
    out_scale = float(np.float32((out_hi - out_lo) / 255.0))
    out_zero = int(np.clip(round(-128 - out_lo / out_scale), -128, 127))
    q_out = QuantParams(out_scale, out_zero + offset)
    np_io = np.dtype(io_dtype)
    g = _Graph(np.dtype(np.float32))
    g.const("input.scale", np.array(q_in.scale, dtype=np.float32))
    g.const("input.zero_point", np.array(q_in.zero_point, dtype=np_io))
    g.node("DequantizeLinear", ["input", "input.scale", "input.zero_point"], ["input.real"])
    h = "input.real"
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        g.dense(h, w, b, f"dense{i}", f"dense{i}.out")
        h = f"dense{i}.out"
        if not last:
            g.node("Relu", [h], [f"relu{i}.out"])
            h = f"relu{i}.out"
    g.const("logits.scale", np.array(q_out.scale, dtype=np.float32))
    g.const("logits.zero_point", np.array(q_out.zero_point, dtype=np_io))
    g.node("QuantizeLinear", [h, "logits.scale", "logits.zero_point"], ["logits"])
    n = _batch_dim(dynamic_batch)
    g.save(path, "mlp_int_io", [_value_info("input", elem, [n, sizes[0]])],
           [_value_info("logits", elem, [n, sizes[-1]])])

    def float_forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        return {"logits": mlp_forward(layers, inputs["input"], apply_softmax=False)}

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        real = q_in.dequantize(np.asarray(inputs["input"]))
        return {"logits": q_out.quantize(float_forward({"input": real})["logits"], io_dtype)}

    bd = _spec_dim(dynamic_batch)
    return ModelSpec(
        path=path,
        framework=Framework.ONNX,
        precision=Precision.INT8 if io_dtype == "int8" else Precision.UINT8,
        inputs=(TensorInfo("input", (bd, sizes[0]), io_dtype, q_in, input_range),),
        outputs=(TensorInfo("logits", (bd, sizes[-1]), io_dtype, q_out),),
        weights=_named_dense(layers),
        forward=forward,
        float_forward=float_forward,
        atol=1.0,
        float_atol=out_scale * 1.5 + _FLOAT_ATOL,
    )
