"""The TFLite builders write real models that LiteRT runs as their numpy references say."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edgefleet.tools.modelgen import tflite_models
from edgefleet.tools.modelgen.spec import Framework, ModelGenError, ModelSpec, Precision


def run_interpreter(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the file with the bare interpreter (no edgefleet runtime involved)."""
    interpreter = Interpreter(model_path=str(spec.path))
    details = {d["name"]: d for d in interpreter.get_input_details()}
    for name, array in inputs.items():
        interpreter.resize_tensor_input(details[name]["index"], array.shape, strict=True)
    interpreter.allocate_tensors()
    for name, array in inputs.items():
        interpreter.set_tensor(details[name]["index"], array)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"])
            for d in interpreter.get_output_details()}


def check_against_reference(spec: ModelSpec, batch: int) -> None:
    inputs = spec.random_inputs(batch, seed=batch)
    got = run_interpreter(spec, inputs)
    want = spec.reference(inputs)
    assert list(got) == list(spec.output_names)
    for info in spec.outputs:
        assert got[info.name].dtype == np.dtype(info.dtype)
        assert got[info.name].shape == info.concrete_shape(batch)
        diff = np.abs(got[info.name].astype(np.float64) - want[info.name].astype(np.float64))
        assert diff.max() <= spec.atol, info.name
    # The dequantized output also matches the float network within float_atol.
    real_inputs = {
        t.name: t.quant.dequantize(inputs[t.name]) if t.quant else inputs[t.name]
        for t in spec.inputs
    }
    real_out = spec.dequantize_outputs(got)
    float_ref = spec.float_reference(real_inputs)
    for name in spec.output_names:
        assert np.abs(real_out[name] - float_ref[name]).max() <= spec.float_atol, name


Builder = Callable[[Path], ModelSpec]
BUILDERS: dict[str, Builder] = {
    "mlp-float32": tflite_models.mlp,
    "mlp-float32-logits": lambda p: tflite_models.mlp(p, sizes=(5, 7, 6, 3), softmax=False),
    "mlp-float16": lambda p: tflite_models.mlp(p, quantize="float16"),
    "mlp-int8": lambda p: tflite_models.mlp(p, quantize="int8"),
    "mlp-int8-logits": lambda p: tflite_models.mlp(p, quantize="int8", softmax=False,
                                                   input_range=(0.0, 4.0)),
    "mlp-uint8": lambda p: tflite_models.mlp(p, quantize="uint8"),
    "mlp-uint8-logits-deep": lambda p: tflite_models.mlp(p, sizes=(10, 20, 20, 5),
                                                         quantize="uint8", softmax=False),
    "cnn-nhwc-float32": lambda p: tflite_models.cnn_nhwc(p, input_shape=(5, 7, 2)),
    "cnn-nchw-float32": lambda p: tflite_models.cnn_nchw(p, softmax=False),
    "cnn-nhwc-int8": lambda p: tflite_models.cnn_nhwc(p, quantize="int8"),
    "cnn-nchw-uint8": lambda p: tflite_models.cnn_nchw(p, input_shape=(2, 6, 6),
                                                       quantize="uint8", softmax=False),
    "multi-io": tflite_models.multi_io,
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_builder_matches_reference(kind: str, tmp_path: Path) -> None:
    spec = BUILDERS[kind](tmp_path / "sub" / f"{kind}.tflite")
    assert spec.framework is Framework.TFLITE
    data = spec.path.read_bytes()
    assert data[4:8] == b"TFL3"
    for batch in (1, 4):
        check_against_reference(spec, batch)


def test_static_batch_has_fixed_shape(tmp_path: Path) -> None:
    spec = tflite_models.mlp(tmp_path / "m.tflite", dynamic_batch=False)
    detail = Interpreter(model_path=str(spec.path)).get_input_details()[0]
    assert list(detail["shape_signature"]) == [1, 16]
    assert spec.inputs[0].shape == (1, 16)
    check_against_reference(spec, 1)


def test_dynamic_batch_signature(tmp_path: Path) -> None:
    spec = tflite_models.mlp(tmp_path / "m.tflite", sizes=(3, 2))
    detail = Interpreter(model_path=str(spec.path)).get_input_details()[0]
    assert list(detail["shape_signature"]) == [-1, 3]
    assert spec.inputs[0].shape == (None, 3)


def test_int8_tensors_carry_quantization(tmp_path: Path) -> None:
    spec = tflite_models.mlp(tmp_path / "m.tflite", quantize="int8")
    interpreter = Interpreter(model_path=str(spec.path))
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    assert inp["dtype"] is np.int8 and out["dtype"] is np.int8
    assert spec.inputs[0].quant is not None and spec.outputs[0].quant is not None
    assert inp["quantization"][0] == pytest.approx(spec.inputs[0].quant.scale)
    assert inp["quantization"][1] == spec.inputs[0].quant.zero_point
    # Softmax output uses TFLite's fixed int8 parameters.
    assert out["quantization"] == (pytest.approx(1 / 256), -128)
    # FULLY_CONNECTED weights are per-channel along the output dimension.
    weights = next(t for t in interpreter.get_tensor_details() if t["name"] == "dense0.weight")
    params = weights["quantization_parameters"]
    assert weights["dtype"] is np.int8
    assert len(params["scales"]) == 32 and params["quantized_dimension"] == 0
    np.testing.assert_allclose(params["scales"], spec.weights["dense0.weight_scales"])
    bias = next(t for t in interpreter.get_tensor_details() if t["name"] == "dense0.bias")
    assert bias["dtype"] is np.int32


def test_uint8_model_io_is_uint8(tmp_path: Path) -> None:
    spec = tflite_models.mlp(tmp_path / "m.tflite", quantize="uint8")
    interpreter = Interpreter(model_path=str(spec.path))
    assert interpreter.get_input_details()[0]["dtype"] is np.uint8
    assert interpreter.get_output_details()[0]["dtype"] is np.uint8
    assert spec.precision is Precision.UINT8
    assert spec.outputs[0].quant is not None and spec.outputs[0].quant.zero_point == 0


def test_float16_weights_are_stored_as_float16(tmp_path: Path) -> None:
    f32 = tflite_models.mlp(tmp_path / "f32.tflite", sizes=(64, 64, 4))
    f16 = tflite_models.mlp(tmp_path / "f16.tflite", sizes=(64, 64, 4), quantize="float16")
    assert f16.path.stat().st_size < 0.6 * f32.path.stat().st_size
    types = {t["dtype"] for t in Interpreter(model_path=str(f16.path)).get_tensor_details()}
    assert np.float16 in types


def test_int8_is_smaller_than_float(tmp_path: Path) -> None:
    f32 = tflite_models.mlp(tmp_path / "f32.tflite", sizes=(128, 128, 10))
    i8 = tflite_models.mlp(tmp_path / "i8.tflite", sizes=(128, 128, 10), quantize="int8")
    assert i8.path.stat().st_size < 0.35 * f32.path.stat().st_size


def test_explicit_weights_are_used(tmp_path: Path) -> None:
    w = np.eye(3, dtype=np.float32) * 2.0
    b = np.array([1.0, 0.0, -1.0], dtype=np.float32)
    spec = tflite_models.mlp(tmp_path / "m.tflite", weights=[(w, b)], softmax=False)
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    got = run_interpreter(spec, {"input": x})["logits"]
    np.testing.assert_allclose(got, [[3.0, 4.0, 5.0]])


def test_per_channel_io_dequantizes_per_column(tmp_path: Path) -> None:
    spec = tflite_models.per_channel_io(tmp_path / "pc.tflite", (0.5, 2.0), (1, -3))
    detail = Interpreter(model_path=str(spec.path)).get_input_details()[0]
    np.testing.assert_allclose(detail["quantization_parameters"]["scales"], [0.5, 2.0])
    assert list(detail["quantization_parameters"]["zero_points"]) == [1, -3]
    assert detail["quantization_parameters"]["quantized_dimension"] == 1
    codes = np.array([[1, -3], [5, 0]], dtype=np.int8)
    got = run_interpreter(spec, {"codes": codes})["values"]
    np.testing.assert_allclose(got, [[0.0, 0.0], [2.0, 6.0]])
    np.testing.assert_allclose(got, spec.reference({"codes": codes})["values"])


def test_custom_op_model_is_refused_by_litert(tmp_path: Path) -> None:
    path = tflite_models.custom_op(tmp_path / "custom.tflite", "NoSuchOp")
    with pytest.raises(RuntimeError, match="NoSuchOp"):
        Interpreter(model_path=str(path)).allocate_tensors()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: tflite_models.mlp(p, quantize="int4"), "quantize"),
        (lambda p: tflite_models.cnn_nhwc(p, quantize="float16"), "quantize"),
        (lambda p: tflite_models.mlp(p, sizes=(4,)), "at least two"),
        (lambda p: tflite_models.cnn_nhwc(p, input_shape=(0, 4, 1)), "invalid CNN"),
        (lambda p: tflite_models.per_channel_io(p, (1.0,), (0, 1)), "matching"),
    ],
)
def test_bad_arguments(call: Callable[[Path], object], match: str, tmp_path: Path) -> None:
    with pytest.raises(ModelGenError, match=match):
        call(tmp_path / "x.tflite")
