"""Small, real TFLite models written with LiteRT's flatbuffer schema (no TensorFlow).

Every builder writes the ``.tflite`` file at ``path`` (parents created) and returns a
:class:`~edgefleet.tools.modelgen.spec.ModelSpec`. Tensor names mirror
:mod:`~edgefleet.tools.modelgen.onnx_models` so tests can run the same checks on both
formats. With ``dynamic_batch=True`` the batch dimension has ``shape_signature`` -1 (the
stored shape is 1), which the interpreter resizes.

``quantize`` picks the precision:

* ``None``: float32 weights and activations.
* ``"float16"`` (``mlp`` only): float16 weight buffers behind DEQUANTIZE ops, float32 I/O.
* ``"int8"``: full-integer. int8 input/output tensors with per-tensor scale/zero point
  (calibrated on uniform samples of ``input_range``), int8 weights quantized
  symmetrically per output channel (``quantized_dimension`` 0), int32 biases with scale
  ``input_scale * weight_scale[c]``. Softmax outputs use TFLite's fixed 1/256 scale.
* ``"uint8"``: the int8 network between QUANTIZE ops, so the model's input and output
  tensors are uint8 (as TFLite's converter does with ``inference_input_type=uint8``).

For quantized models ``spec.reference`` models the integer arithmetic (int32
accumulation, requantization rounding half away from zero), so a runtime matches it to
within ``spec.atol`` quantization steps (TFLite's fixed-point multipliers and softmax
lookup tables differ from exact rounding by a step or two); ``spec.float_reference``
is the float network, matched by the dequantized output within ``spec.float_atol``.
``spec.weights`` holds the float weights (``dense0.weight`` is [in, out]) and, for int8
models, ``<name>.weight_q`` / ``<name>.weight_scales`` / ``<name>.bias_q``.

Builders:

* ``mlp(path, sizes=(16, 32, 4), *, seed=0, quantize=None, softmax=True,
  dynamic_batch=True, weights=None, input_range=(-1.0, 1.0))``: FULLY_CONNECTED (fused
  RELU between layers) + optional SOFTMAX; input ``"input"`` [N, sizes[0]], output
  ``"probabilities"`` or ``"logits"``.
* ``cnn_nhwc(path, input_shape=(8, 8, 1), *, channels=4, num_classes=3, ...)``: CONV_2D
  3x3 SAME + RELU, RESHAPE to [N, H*W*channels], FULLY_CONNECTED, optional SOFTMAX;
  input ``"image"`` [N, H, W, C].
* ``cnn_nchw(path, input_shape=(1, 8, 8), ...)``: the same behind a TRANSPOSE, so the
  input ``"image"`` is [N, C, H, W].
* ``multi_io(path, *, features=8, hidden=16, classes=4, ...)``: inputs ``"features"``
  [N, 8] and ``"bias"`` [N, 4]; outputs ``"scores"`` = embedding @ W2 + b2 + bias and
  ``"embedding"`` = relu(features @ W1 + b1).
* ``custom_op(path, custom_code="EdgefleetUnknownOp")``: one CUSTOM operator no
  interpreter knows, between a float input ``"input"`` [1, 4] and output ``"output"``:
  a valid flatbuffer that runtimes must refuse cleanly.
* ``per_channel_io(path, scales, zero_points, *, dynamic_batch=True)``: int8 input
  ``"codes"`` [N, C] quantized per channel along axis 1, DEQUANTIZE to float32 output
  ``"values"``: the smallest model whose *signature* carries per-channel parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import numpy.typing as npt
from ai_edge_litert import schema_py_generated as schema

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
    round_half_away,
)

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
DESCRIPTION = "edgefleet.modelgen"

_FLOAT_ATOL = 1e-4
_FLOAT16_ATOL = 1e-3
_INT_ATOL = 2.0  # quantization steps: TFLite fixed-point rounding vs exact rounding
_CALIBRATION_SAMPLES = 512
_SOFTMAX_INT8 = QuantParams(1.0 / 256.0, -128)

_OP = schema.BuiltinOperator
_OPTIONS = schema.BuiltinOptions
_ACT = schema.ActivationFunctionType
_TT = schema.TensorType
_NP_TO_TFLITE = {
    np.dtype(np.float32): _TT.FLOAT32,
    np.dtype(np.float16): _TT.FLOAT16,
    np.dtype(np.int8): _TT.INT8,
    np.dtype(np.uint8): _TT.UINT8,
    np.dtype(np.int32): _TT.INT32,
    np.dtype(np.int64): _TT.INT64,
}


# -- flatbuffer assembly ------------------------------------------------------------------
class _AlignedBuffer(schema.BufferT):
    """A buffer whose bytes start on a 16-byte boundary, as TFLite's converter writes them."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.raw = data

    def Pack(self, builder: flatbuffers.Builder) -> int:
        n = len(self.raw)
        builder.StartVector(1, n, 16)
        builder.head = builder.head - n
        builder.Bytes[builder.head : builder.head + n] = self.raw
        vector = builder.EndVector()
        schema.BufferStart(builder)
        schema.BufferAddData(builder, vector)
        return int(schema.BufferEnd(builder))


def _quantization(scales: npt.ArrayLike, zero_points: npt.ArrayLike, axis: int = 0) -> Any:
    q = schema.QuantizationParametersT()
    q.scale = [float(s) for s in np.ravel(scales)]
    q.zeroPoint = [int(z) for z in np.ravel(zero_points)]
    q.quantizedDimension = axis
    return q


class _Graph:
    """One subgraph plus the model-level tables (buffers, operator codes)."""

    def __init__(self, dynamic_batch: bool) -> None:
        self.dynamic_batch = dynamic_batch
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [schema.BufferT()]  # buffer 0: the empty sentinel
        self.opcodes: list[Any] = []
        self.opcode_index: dict[tuple[int, int], int] = {}
        self.operators: list[Any] = []

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: Any,
        *,
        data: np.ndarray | None = None,
        quant: Any = None,
        batched: bool = True,
    ) -> int:
        """Add a tensor; ``batched`` activations get -1 as first dim of their signature."""
        t = schema.TensorT()
        t.name = name
        t.shape = [int(d) for d in shape]
        t.type = _NP_TO_TFLITE[np.dtype(dtype)]
        if data is not None:
            raw = np.ascontiguousarray(data, dtype=np.dtype(dtype)).tobytes()
            self.buffers.append(_AlignedBuffer(raw))
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        if batched and self.dynamic_batch and data is None:
            t.shapeSignature = [-1, *t.shape[1:]]
        t.quantization = quant
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, value: np.ndarray, quant: Any = None) -> int:
        arr = np.asarray(value)
        return self.tensor(name, arr.shape, arr.dtype, data=arr, quant=quant, batched=False)

    def op(
        self,
        code: int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options_type: int = 0,
        options: Any = None,
        *,
        version: int = 1,
        custom_code: str | None = None,
    ) -> None:
        key = (code, version) if custom_code is None else (code, hash(custom_code))
        if key not in self.opcode_index:
            oc = schema.OperatorCodeT()
            oc.customCode = custom_code
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = version
            self.opcode_index[key] = len(self.opcodes)
            self.opcodes.append(oc)
        o = schema.OperatorT()
        o.opcodeIndex = self.opcode_index[key]
        o.inputs = list(inputs)
        o.outputs = list(outputs)
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.operators.append(o)

    def to_bytes(self, inputs: Sequence[int], outputs: Sequence[int], name: str) -> bytes:
        sub = schema.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = list(inputs)
        sub.outputs = list(outputs)
        sub.operators = self.operators
        sub.name = name
        model = schema.ModelT()
        model.version = SCHEMA_VERSION
        model.operatorCodes = self.opcodes
        model.subgraphs = [sub]
        model.description = DESCRIPTION
        model.buffers = self.buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    def save(self, path: Path, inputs: Sequence[int], outputs: Sequence[int], name: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes(inputs, outputs, name))


def _fc_options(relu_fused: bool) -> Any:
    opts = schema.FullyConnectedOptionsT()
    opts.fusedActivationFunction = _ACT.RELU if relu_fused else _ACT.NONE
    return opts


def _softmax_options() -> Any:
    opts = schema.SoftmaxOptionsT()
    opts.beta = 1.0
    return opts


# -- quantization helpers -----------------------------------------------------------------
def _affine(lo: float, hi: float) -> QuantParams:
    """int8 asymmetric parameters covering [lo, hi] (widened to include 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(round_half_away(np.array(-128.0 - lo / scale)), -128, 127))
    return QuantParams(float(np.float32(scale)), zero_point)


def _shift_to_uint8(q: QuantParams) -> QuantParams:
    return QuantParams(q.scale, q.zero_point + 128)


def _per_channel(w_out_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (axis 0): (int8 weights, float32 scales)."""
    flat = np.abs(w_out_first.reshape(w_out_first.shape[0], -1)).max(axis=1)
    scales = (np.maximum(flat, 1e-8) / 127.0).astype(np.float32)
    shape = (-1,) + (1,) * (w_out_first.ndim - 1)
    q = round_half_away(w_out_first / scales.reshape(shape).astype(np.float64))
    return np.clip(q, -127, 127).astype(np.int8), scales


def _requantize(
    acc: np.ndarray, multiplier: np.ndarray, out: QuantParams, relu_fused: bool
) -> np.ndarray:
    q = round_half_away(acc.astype(np.float64) * multiplier) + out.zero_point
    lo = out.zero_point if relu_fused else -128
    return np.clip(q, lo, 127).astype(np.int8)


class _QDense:
    """One int8 FULLY_CONNECTED layer: its parameters and its integer forward pass."""

    def __init__(self, w: np.ndarray, b: np.ndarray, q_in: QuantParams, q_out: QuantParams,
                 relu_fused: bool) -> None:
        self.w_q, self.w_scales = _per_channel(w.T)  # TFLite FC weights are [out, in]
        self.bias_scales = (np.float64(q_in.scale) * self.w_scales.astype(np.float64))
        self.b_q = round_half_away(b.astype(np.float64) / self.bias_scales).astype(np.int32)
        self.q_in, self.q_out, self.relu_fused = q_in, q_out, relu_fused
        self.multiplier = self.bias_scales / np.float64(q_out.scale)

    def add_to(self, g: _Graph, x: int, prefix: str, out_name: str, n_batch: int) -> int:
        w_t = g.const(f"{prefix}.weight", self.w_q,
                      _quantization(self.w_scales, [0] * len(self.w_scales), 0))
        b_t = g.const(f"{prefix}.bias", self.b_q,
                      _quantization(self.bias_scales, [0] * len(self.bias_scales), 0))
        y = g.tensor(out_name, [n_batch, self.w_q.shape[0]], np.int8,
                     quant=_quantization([self.q_out.scale], [self.q_out.zero_point]))
        g.op(_OP.FULLY_CONNECTED, [x, w_t, b_t], [y], _OPTIONS.FullyConnectedOptions,
             _fc_options(self.relu_fused), version=4)
        return y

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        centered = x_q.astype(np.int64) - self.q_in.zero_point
        acc = centered.reshape(centered.shape[0], -1) @ self.w_q.T.astype(np.int64) + self.b_q
        return _requantize(acc, self.multiplier, self.q_out, self.relu_fused)

    def named(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight_q": self.w_q, f"{prefix}.weight_scales": self.w_scales,
                f"{prefix}.bias_q": self.b_q}


def _softmax_int8(logits_q: np.ndarray, q_in: QuantParams) -> np.ndarray:
    probs = np_softmax(q_in.dequantize(logits_q).astype(np.float64))
    return _SOFTMAX_INT8.quantize(probs, "int8")


def _calibration(input_range: tuple[float, float], shape: tuple[int, ...], seed: int) -> np.ndarray:
    lo, hi = input_range
    rng = np.random.default_rng(seed + 7919)
    x = rng.uniform(lo, hi, size=(_CALIBRATION_SAMPLES, *shape))
    x[0], x[1] = lo, hi  # the extremes are always seen
    return x


def _range_of(values: np.ndarray, margin: float = 0.05) -> QuantParams:
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * margin
    return _affine(lo - pad, hi + pad)


def _check_quantize(quantize: str | None, allowed: Sequence[str | None]) -> Precision:
    precisions = {None: Precision.FLOAT32, "float16": Precision.FLOAT16,
                  "int8": Precision.INT8, "uint8": Precision.UINT8}
    if quantize not in allowed:
        raise ModelGenError(f"quantize must be one of {list(allowed)}, got {quantize!r}")
    return precisions[quantize]


class _IntIO:
    """Input/output wiring for int8 graphs, with uint8 QUANTIZE adapters when asked."""

    def __init__(self, g: _Graph, precision: Precision) -> None:
        self.g = g
        self.uint8 = precision is Precision.UINT8
        self.io_dtype = "uint8" if self.uint8 else "int8"

    def io_quant(self, q: QuantParams) -> QuantParams:
        return _shift_to_uint8(q) if self.uint8 else q

    def input(self, name: str, shape: Sequence[int], q: QuantParams) -> tuple[int, int]:
        """(model input tensor, int8 tensor the network reads)."""
        qio = self.io_quant(q)
        t = self.g.tensor(name, shape, self.io_dtype,
                          quant=_quantization([qio.scale], [qio.zero_point]))
        if not self.uint8:
            return t, t
        inner = self.g.tensor(f"{name}_int8", shape, np.int8,
                              quant=_quantization([q.scale], [q.zero_point]))
        self.g.op(_OP.QUANTIZE, [t], [inner], version=2)
        return t, inner

    def output(self, inner: int, name: str, shape: Sequence[int], q: QuantParams) -> int:
        """Expose int8 tensor ``inner`` as the model output ``name``."""
        if not self.uint8:
            return inner
        qio = self.io_quant(q)
        t = self.g.tensor(name, shape, np.uint8,
                          quant=_quantization([qio.scale], [qio.zero_point]))
        self.g.op(_OP.QUANTIZE, [inner], [t], version=2)
        return t

    def inner_name(self, name: str) -> str:
        return f"{name}_int8" if self.uint8 else name

    def to_int8(self, x: np.ndarray) -> np.ndarray:
        return (x.astype(np.int16) - 128).astype(np.int8) if self.uint8 else x

    def from_int8(self, x: np.ndarray) -> np.ndarray:
        return (x.astype(np.int16) + 128).astype(np.uint8) if self.uint8 else x


def _float_atol(
    float_forward: Any, int_forward: Any, spec_inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo], samples: Mapping[str, np.ndarray],
) -> float:
    """Float tolerance measured on calibration data plus two output steps of headroom."""
    quantized = {t.name: t.quant.quantize(samples[t.name], t.dtype) if t.quant else
                 samples[t.name] for t in spec_inputs}
    real_in = {t.name: t.quant.dequantize(quantized[t.name]) if t.quant else
               samples[t.name] for t in spec_inputs}
    ref = float_forward(real_in)
    got = int_forward(quantized)
    worst = 0.0
    for t in outputs:
        assert t.quant is not None
        err = np.abs(t.quant.dequantize(got[t.name]) - ref[t.name]).max()
        worst = max(worst, float(err) + 2 * t.quant.scale)
    return worst * 1.25


# -- builders -----------------------------------------------------------------------------
def mlp(
    path: str | Path,
    sizes: Sequence[int] = (16, 32, 4),
    *,
    seed: int = 0,
    quantize: str | None = None,
    softmax: bool = True,
    dynamic_batch: bool = True,
    weights: Sequence[Dense] | None = None,
    input_range: tuple[float, float] = (-1.0, 1.0),
) -> ModelSpec:
    """Write a FULLY_CONNECTED MLP (RELU fused between layers, optional SOFTMAX).

    Args:
        path: the ``.tflite`` file to write.
        sizes: layer widths, input first (ignored when ``weights`` is given).
        quantize: None (float32), "float16", "int8" or "uint8" (see the module docstring).
        weights: (W [in, out], b [out]) per layer, numpy convention ``x @ W + b``.
        input_range: the float range of inputs; int8/uint8 calibrate on it.

    Raises:
        ModelGenError: invalid sizes, weights or ``quantize``.
    """
    path = Path(path)
    precision = _check_quantize(quantize, (None, "float16", "int8", "uint8"))
    layers = check_mlp_weights(weights) if weights is not None else init_mlp(sizes, seed)
    n_in, n_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    out_name = "probabilities" if softmax else "logits"
    bd = None if dynamic_batch else 1
    g = _Graph(dynamic_batch)
    if precision in (Precision.FLOAT32, Precision.FLOAT16):
        stored = _float_mlp(g, layers, precision, softmax, out_name)
        x_t = 0
        g.save(path, [x_t], [len(g.tensors) - 1], "mlp")

        def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
            return {out_name: mlp_forward(stored, inputs["input"], apply_softmax=softmax)}

        atol = _FLOAT_ATOL if precision is Precision.FLOAT32 else _FLOAT16_ATOL
        return ModelSpec(
            path=path, framework=Framework.TFLITE, precision=precision,
            inputs=(TensorInfo("input", (bd, n_in), "float32", value_range=input_range),),
            outputs=(TensorInfo(out_name, (bd, n_out), "float32"),),
            weights=_named_dense(stored), forward=forward, float_forward=forward,
            atol=atol, float_atol=atol,
        )
    return _int_mlp(path, g, layers, precision, softmax=softmax, out_name=out_name, seed=seed,
                    input_range=input_range, bd=bd)


def _float_mlp(
    g: _Graph, layers: Sequence[Dense], precision: Precision, softmax: bool, out_name: str
) -> list[Dense]:
    x = g.tensor("input", [1, layers[0][0].shape[0]], np.float32)
    stored: list[Dense] = []
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        if precision is Precision.FLOAT16:
            w16, b16 = w.T.astype(np.float16), b.astype(np.float16)
            w_t = _dequantized(g, f"dense{i}.weight", w16)
            b_t = _dequantized(g, f"dense{i}.bias", b16)
            stored.append((w16.T.astype(np.float32), b16.astype(np.float32)))
        else:
            w_t = g.const(f"dense{i}.weight", np.ascontiguousarray(w.T))
            b_t = g.const(f"dense{i}.bias", b)
            stored.append((w, b))
        name = f"dense{i}.out" if not last else ("logits_raw" if softmax else out_name)
        y = g.tensor(name, [1, w.shape[1]], np.float32)
        g.op(_OP.FULLY_CONNECTED, [x, w_t, b_t], [y], _OPTIONS.FullyConnectedOptions,
             _fc_options(not last))
        x = y
    if softmax:
        y = g.tensor(out_name, [1, layers[-1][0].shape[1]], np.float32)
        g.op(_OP.SOFTMAX, [x], [y], _OPTIONS.SoftmaxOptions, _softmax_options())
    return stored


def _dequantized(g: _Graph, name: str, value16: np.ndarray) -> int:
    stored = g.const(f"{name}_f16", value16)
    out = g.tensor(name, value16.shape, np.float32, batched=False)
    g.op(_OP.DEQUANTIZE, [stored], [out], version=3)
    return out


def _int_mlp(
    path: Path, g: _Graph, layers: Sequence[Dense], precision: Precision, *, softmax: bool,
    out_name: str, seed: int, input_range: tuple[float, float], bd: int | None,
) -> ModelSpec:
    n_in, n_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    calib = _calibration(input_range, (n_in,), seed)
    q_in = _affine(*input_range)
    # Activation ranges from the float network on calibration data.
    qlayers: list[_QDense] = []
    h = calib
    q_prev = q_in
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        h = h @ w.astype(np.float64) + b
        if not last:
            h = relu(h)
        q_out = _range_of(h)
        qlayers.append(_QDense(w, b, q_prev, q_out, relu_fused=not last))
        q_prev = q_out
    io = _IntIO(g, precision)
    x_t, x = io.input("input", [1, n_in], q_in)
    logits_q = qlayers[-1].q_out
    for i, layer in enumerate(qlayers):
        last = i == len(qlayers) - 1
        name = f"dense{i}.out" if not last else ("logits_raw" if softmax else out_name)
        if last and not softmax:
            name = io.inner_name(out_name)
        x = layer.add_to(g, x, f"dense{i}", name, 1)
    q_final = logits_q
    if softmax:
        q_final = _SOFTMAX_INT8
        y = g.tensor(io.inner_name(out_name), [1, n_out], np.int8,
                     quant=_quantization([q_final.scale], [q_final.zero_point]))
        g.op(_OP.SOFTMAX, [x], [y], _OPTIONS.SoftmaxOptions, _softmax_options(), version=2)
        x = y
    y_t = io.output(x, out_name, [1, n_out], q_final)
    g.save(path, [x_t], [y_t], "mlp")

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        hq = io.to_int8(np.asarray(inputs["input"]))
        for layer in qlayers:
            hq = layer.forward(hq)
        if softmax:
            hq = _softmax_int8(hq, logits_q)
        return {out_name: io.from_int8(hq)}

    def float_forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        return {out_name: mlp_forward(layers, inputs["input"], apply_softmax=softmax)}

    spec_in = (TensorInfo("input", (bd, n_in), io.io_dtype, io.io_quant(q_in), input_range),)
    spec_out = (TensorInfo(out_name, (bd, n_out), io.io_dtype, io.io_quant(q_final)),)
    named = _named_dense(layers)
    for i, layer in enumerate(qlayers):
        named.update(layer.named(f"dense{i}"))
    return ModelSpec(
        path=path, framework=Framework.TFLITE, precision=precision,
        inputs=spec_in, outputs=spec_out, weights=named, forward=forward,
        float_forward=float_forward, atol=_INT_ATOL,
        float_atol=_float_atol(float_forward, forward, spec_in, spec_out,
                               {"input": calib.astype(np.float32)}),
    )


def _named_dense(layers: Sequence[Dense], prefix: str = "dense") -> dict[str, np.ndarray]:
    named: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(layers):
        named[f"{prefix}{i}.weight"] = w
        named[f"{prefix}{i}.bias"] = b
    return named


def cnn_nhwc(
    path: str | Path,
    input_shape: tuple[int, int, int] = (8, 8, 1),
    *,
    channels: int = 4,
    num_classes: int = 3,
    seed: int = 0,
    quantize: str | None = None,
    softmax: bool = True,
    dynamic_batch: bool = True,
) -> ModelSpec:
    """Write CONV_2D 3x3 SAME + RELU, RESHAPE, FULLY_CONNECTED (+ SOFTMAX); input (H, W, C).

    Raises:
        ModelGenError: a non-positive dimension or an unknown ``quantize``.
    """
    h, w, c = input_shape
    return _cnn(Path(path), (h, w, c), nchw=False, channels=channels,
                num_classes=num_classes, seed=seed, quantize=quantize, softmax=softmax,
                dynamic_batch=dynamic_batch)


def cnn_nchw(
    path: str | Path,
    input_shape: tuple[int, int, int] = (1, 8, 8),
    *,
    channels: int = 4,
    num_classes: int = 3,
    seed: int = 0,
    quantize: str | None = None,
    softmax: bool = True,
    dynamic_batch: bool = True,
) -> ModelSpec:
    """Like :func:`cnn_nhwc` behind a TRANSPOSE: the input ``"image"`` is (C, H, W).

    Raises:
        ModelGenError: a non-positive dimension or an unknown ``quantize``.
    """
    c, h, w = input_shape
    return _cnn(Path(path), (h, w, c), nchw=True, channels=channels,
                num_classes=num_classes, seed=seed, quantize=quantize, softmax=softmax,
                dynamic_batch=dynamic_batch)


def _cnn(
    path: Path, hwc: tuple[int, int, int], *, nchw: bool, channels: int, num_classes: int,
    seed: int, quantize: str | None, softmax: bool, dynamic_batch: bool,
) -> ModelSpec:
    h, w, c = hwc
    if min(h, w, c, channels, num_classes) < 1:
        raise ModelGenError(f"invalid CNN dimensions {hwc}, {channels}, {num_classes}")
    precision = _check_quantize(quantize, (None, "int8", "uint8"))
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0.0, np.sqrt(2.0 / (c * 9)), size=(channels, c, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0.0, 0.1, size=(channels,)).astype(np.float32)
    n_feat = h * w * channels
    fc_w, fc_b = init_dense(rng, n_feat, num_classes)
    out_name = "probabilities" if softmax else "logits"
    in_shape = (c, h, w) if nchw else (h, w, c)
    value_range = (0.0, 1.0)

    def to_nhwc(x: np.ndarray) -> np.ndarray:
        return x.transpose(0, 2, 3, 1) if nchw else x

    def conv_float(x_nhwc: np.ndarray) -> np.ndarray:
        y = conv2d_nchw(x_nhwc.transpose(0, 3, 1, 2), conv_w, conv_b, pad=1)
        return relu(y).transpose(0, 2, 3, 1)  # NHWC

    def float_forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        x = to_nhwc(np.asarray(inputs["image"], dtype=np.float64))
        feat = conv_float(x).reshape(x.shape[0], -1)
        logits = feat @ fc_w.astype(np.float64) + fc_b
        y = np_softmax(logits) if softmax else logits
        return {out_name: y.astype(np.float32)}

    g = _Graph(dynamic_batch)
    filt = np.ascontiguousarray(conv_w.transpose(0, 2, 3, 1))  # TFLite [O, KH, KW, I]
    conv_opts = schema.Conv2DOptionsT()
    conv_opts.padding = schema.Padding.SAME
    conv_opts.strideH = conv_opts.strideW = 1
    conv_opts.dilationHFactor = conv_opts.dilationWFactor = 1
    conv_opts.fusedActivationFunction = _ACT.RELU
    reshape_opts = schema.ReshapeOptionsT()
    reshape_opts.newShape = [-1, n_feat]
    new_shape = np.array([-1, n_feat], dtype=np.int32)
    perm = np.array([0, 2, 3, 1], dtype=np.int32)
    weights = {"conv0.weight": conv_w, "conv0.bias": conv_b, "fc.weight": fc_w, "fc.bias": fc_b}
    bd = None if dynamic_batch else 1

    if precision is Precision.FLOAT32:
        x_t = g.tensor("image", [1, *in_shape], np.float32)
        x = x_t
        if nchw:
            x = g.tensor("image_nhwc", [1, h, w, c], np.float32)
            g.op(_OP.TRANSPOSE, [x_t, g.const("perm", perm)], [x], _OPTIONS.TransposeOptions,
                 schema.TransposeOptionsT())
        y = g.tensor("conv0.out", [1, h, w, channels], np.float32)
        g.op(_OP.CONV_2D, [x, g.const("conv0.weight", filt), g.const("conv0.bias", conv_b)],
             [y], _OPTIONS.Conv2DOptions, conv_opts)
        flat = g.tensor("flat.out", [1, n_feat], np.float32)
        g.op(_OP.RESHAPE, [y, g.const("flat.shape", new_shape)], [flat],
             _OPTIONS.ReshapeOptions, reshape_opts)
        logits = g.tensor("logits_raw" if softmax else out_name, [1, num_classes], np.float32)
        g.op(_OP.FULLY_CONNECTED, [flat, g.const("fc.weight", np.ascontiguousarray(fc_w.T)),
                                   g.const("fc.bias", fc_b)],
             [logits], _OPTIONS.FullyConnectedOptions, _fc_options(False))
        out = logits
        if softmax:
            out = g.tensor(out_name, [1, num_classes], np.float32)
            g.op(_OP.SOFTMAX, [logits], [out], _OPTIONS.SoftmaxOptions, _softmax_options())
        g.save(path, [x_t], [out], "cnn_nchw" if nchw else "cnn_nhwc")
        return ModelSpec(
            path=path, framework=Framework.TFLITE, precision=precision,
            inputs=(TensorInfo("image", (bd, *in_shape), "float32", value_range=value_range),),
            outputs=(TensorInfo(out_name, (bd, num_classes), "float32"),),
            weights=weights, forward=float_forward, float_forward=float_forward,
            atol=_FLOAT_ATOL, float_atol=_FLOAT_ATOL,
        )

    # -- full-integer CNN --
    calib = _calibration(value_range, in_shape, seed)[:128]
    calib_nhwc = to_nhwc(calib)
    conv_act = conv_float(calib_nhwc)
    q_in = _affine(*value_range)
    q_conv = _range_of(conv_act)
    logits_f = conv_act.reshape(len(calib), -1) @ fc_w.astype(np.float64) + fc_b
    q_logits = _range_of(logits_f)
    filt_q, filt_scales = _per_channel(filt)
    conv_bias_scales = np.float64(q_in.scale) * filt_scales.astype(np.float64)
    conv_b_q = round_half_away(conv_b.astype(np.float64) / conv_bias_scales).astype(np.int32)
    conv_mult = conv_bias_scales / np.float64(q_conv.scale)
    fc = _QDense(fc_w, fc_b, q_conv, q_logits, relu_fused=False)

    io = _IntIO(g, precision)
    x_t, x = io.input("image", [1, *in_shape], q_in)
    qi = _quantization([q_in.scale], [q_in.zero_point])
    if nchw:
        xt = g.tensor("image_nhwc", [1, h, w, c], np.int8, quant=qi)
        g.op(_OP.TRANSPOSE, [x, g.const("perm", perm)], [xt], _OPTIONS.TransposeOptions,
             schema.TransposeOptionsT(), version=2)
        x = xt
    qc = _quantization([q_conv.scale], [q_conv.zero_point])
    y = g.tensor("conv0.out", [1, h, w, channels], np.int8, quant=qc)
    g.op(_OP.CONV_2D, [x, g.const("conv0.weight", filt_q,
                                  _quantization(filt_scales, [0] * channels, 0)),
                       g.const("conv0.bias", conv_b_q,
                               _quantization(conv_bias_scales, [0] * channels, 0))],
         [y], _OPTIONS.Conv2DOptions, conv_opts, version=3)
    flat = g.tensor("flat.out", [1, n_feat], np.int8, quant=qc)
    g.op(_OP.RESHAPE, [y, g.const("flat.shape", new_shape)], [flat],
         _OPTIONS.ReshapeOptions, reshape_opts)
    logits_name = "logits_raw" if softmax else io.inner_name(out_name)
    out = fc.add_to(g, flat, "fc", logits_name, 1)
    q_final = q_logits
    if softmax:
        q_final = _SOFTMAX_INT8
        sm = g.tensor(io.inner_name(out_name), [1, num_classes], np.int8,
                      quant=_quantization([q_final.scale], [q_final.zero_point]))
        g.op(_OP.SOFTMAX, [out], [sm], _OPTIONS.SoftmaxOptions, _softmax_options(), version=2)
        out = sm
    y_t = io.output(out, out_name, [1, num_classes], q_final)
    g.save(path, [x_t], [y_t], "cnn_nchw" if nchw else "cnn_nhwc")

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        xq = to_nhwc(io.to_int8(np.asarray(inputs["image"])))
        centered = xq.astype(np.float64) - q_in.zero_point  # padding is real zero
        acc = conv2d_nchw(centered.transpose(0, 3, 1, 2), filt_q.transpose(0, 3, 1, 2),
                          conv_b_q, pad=1).transpose(0, 2, 3, 1)
        mult = conv_mult.reshape(1, 1, 1, -1)
        hq = _requantize(np.rint(acc), mult, q_conv, relu_fused=True)
        lq = fc.forward(hq.reshape(hq.shape[0], -1))
        if softmax:
            lq = _softmax_int8(lq, q_logits)
        return {out_name: io.from_int8(lq)}

    spec_in = (TensorInfo("image", (bd, *in_shape), io.io_dtype, io.io_quant(q_in),
                          value_range),)
    spec_out = (TensorInfo(out_name, (bd, num_classes), io.io_dtype, io.io_quant(q_final)),)
    weights.update({"conv0.weight_q": filt_q, "conv0.weight_scales": filt_scales,
                    "conv0.bias_q": conv_b_q, **fc.named("fc")})
    return ModelSpec(
        path=path, framework=Framework.TFLITE, precision=precision,
        inputs=spec_in, outputs=spec_out, weights=weights, forward=forward,
        float_forward=float_forward, atol=_INT_ATOL,
        float_atol=_float_atol(float_forward, forward, spec_in, spec_out,
                               {"image": calib.astype(np.float32)}),
    )


def multi_io(
    path: str | Path,
    *,
    features: int = 8,
    hidden: int = 16,
    classes: int = 4,
    seed: int = 0,
    dynamic_batch: bool = True,
) -> ModelSpec:
    """Two float32 inputs (``features``, ``bias``), two outputs (``scores``, ``embedding``).

    Raises:
        ModelGenError: a non-positive size.
    """
    path = Path(path)
    (w1, b1), (w2, b2) = init_mlp((features, hidden, classes), seed)
    g = _Graph(dynamic_batch)
    f_t = g.tensor("features", [1, features], np.float32)
    bias_t = g.tensor("bias", [1, classes], np.float32)
    emb = g.tensor("embedding", [1, hidden], np.float32)
    g.op(_OP.FULLY_CONNECTED,
         [f_t, g.const("dense0.weight", np.ascontiguousarray(w1.T)), g.const("dense0.bias", b1)],
         [emb], _OPTIONS.FullyConnectedOptions, _fc_options(True))
    d1 = g.tensor("dense1.out", [1, classes], np.float32)
    g.op(_OP.FULLY_CONNECTED,
         [emb, g.const("dense1.weight", np.ascontiguousarray(w2.T)), g.const("dense1.bias", b2)],
         [d1], _OPTIONS.FullyConnectedOptions, _fc_options(False))
    scores = g.tensor("scores", [1, classes], np.float32)
    g.op(_OP.ADD, [d1, bias_t], [scores], _OPTIONS.AddOptions, schema.AddOptionsT())
    g.save(path, [f_t, bias_t], [scores, emb], "multi_io")

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        e = relu(np.asarray(inputs["features"], dtype=np.float64) @ w1 + b1)
        s = e @ w2 + b2 + np.asarray(inputs["bias"], dtype=np.float64)
        return {"scores": s.astype(np.float32), "embedding": e.astype(np.float32)}

    bd = None if dynamic_batch else 1
    return ModelSpec(
        path=path, framework=Framework.TFLITE, precision=Precision.FLOAT32,
        inputs=(TensorInfo("features", (bd, features), "float32"),
                TensorInfo("bias", (bd, classes), "float32")),
        outputs=(TensorInfo("scores", (bd, classes), "float32"),
                 TensorInfo("embedding", (bd, hidden), "float32")),
        weights=_named_dense([(w1, b1), (w2, b2)]),
        forward=forward, float_forward=forward, atol=_FLOAT_ATOL, float_atol=_FLOAT_ATOL,
    )


def per_channel_io(
    path: str | Path,
    scales: Sequence[float] = (0.5, 0.25, 0.125, 1.0),
    zero_points: Sequence[int] = (0, 3, -5, 10),
    *,
    dynamic_batch: bool = True,
) -> ModelSpec:
    """int8 input ``"codes"`` [N, C], per-channel along axis 1, DEQUANTIZE to ``"values"``.

    Raises:
        ModelGenError: empty or mismatched scales and zero points, or a non-positive scale.
    """
    path = Path(path)
    if not scales or len(scales) != len(zero_points) or min(scales) <= 0:
        raise ModelGenError("per_channel_io needs matching positive scales and zero points")
    n = len(scales)
    sc = np.asarray(scales, dtype=np.float32)
    zp = np.asarray(zero_points, dtype=np.int64)
    g = _Graph(dynamic_batch)
    x = g.tensor("codes", [1, n], np.int8, quant=_quantization(sc, zp, axis=1))
    y = g.tensor("values", [1, n], np.float32)
    g.op(_OP.DEQUANTIZE, [x], [y], version=4)
    g.save(path, [x], [y], "per_channel_io")

    def forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        q = np.asarray(inputs["codes"]).astype(np.float64)
        return {"values": ((q - zp) * sc.astype(np.float64)).astype(np.float32)}

    def float_forward(inputs: Mapping[str, np.ndarray]) -> Arrays:
        return {"values": np.asarray(inputs["codes"], dtype=np.float32)}

    bd = None if dynamic_batch else 1
    return ModelSpec(
        path=path, framework=Framework.TFLITE, precision=Precision.INT8,
        # TensorInfo holds per-tensor parameters only: the per-channel ones are in weights.
        inputs=(TensorInfo("codes", (bd, n), "int8", value_range=(-128.0, 127.0)),),
        outputs=(TensorInfo("values", (bd, n), "float32"),),
        weights={"codes.scales": sc, "codes.zero_points": zp.astype(np.int32)},
        forward=forward, float_forward=float_forward, atol=1e-6,
        float_atol=float(sc.max()) / 2 + 1e-6,
    )


def custom_op(path: str | Path, custom_code: str = "EdgefleetUnknownOp") -> Path:
    """Write a well-formed model whose only operator is an unregistered custom op.

    Returns the path (there is no reference: no runtime can run it).
    """
    path = Path(path)
    g = _Graph(dynamic_batch=False)
    x = g.tensor("input", [1, 4], np.float32)
    y = g.tensor("output", [1, 4], np.float32)
    g.op(_OP.CUSTOM, [x], [y], custom_code=custom_code)
    g.save(path, [x], [y], "custom_op")
    return path
