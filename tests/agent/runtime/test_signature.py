"""Signature introspection on both backends: names, shapes, dtypes, quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.runtime import (
    Framework,
    Quantization,
    Signature,
    TensorSpec,
    load_model,
)
from edgefleet.tools.modelgen.spec import ModelSpec

ALL_KEYS = [
    "onnx-mlp", "onnx-mlp-static", "onnx-mlp-f16", "onnx-cnn-nchw", "onnx-cnn-nhwc",
    "onnx-multi", "onnx-int-input", "onnx-int8-io", "onnx-uint8-io",
    "tflite-mlp", "tflite-mlp-static", "tflite-mlp-f16", "tflite-mlp-int8",
    "tflite-mlp-uint8", "tflite-cnn-nhwc", "tflite-cnn-nchw", "tflite-cnn-nhwc-int8",
    "tflite-cnn-nchw-uint8", "tflite-multi",
]


def is_dynamic(dim: object) -> bool:
    return dim is None or isinstance(dim, str)


@pytest.mark.parametrize("key", ALL_KEYS)
def test_signature_matches_the_built_model(key: str, zoo: dict[str, ModelSpec]) -> None:
    spec = zoo[key]
    with load_model(spec.path) as runner:
        sig = runner.signature
        assert runner.framework is (Framework.ONNX if key.startswith("onnx") else Framework.TFLITE)
        assert sig.input_names == spec.input_names
        assert sig.output_names == spec.output_names
        assert runner.size_bytes == spec.path.stat().st_size
        assert runner.path == spec.path
        for got, want in zip((*sig.inputs, *sig.outputs), (*spec.inputs, *spec.outputs),
                             strict=True):
            assert got.dtype == np.dtype(want.dtype), got.name
            assert len(got.shape) == len(want.shape)
            for g, w in zip(got.shape, want.shape, strict=True):
                assert is_dynamic(g) if w is None else g == w, (got.name, got.shape)
            if want.quant is None:
                assert got.quantization is None
            else:
                assert got.quantization is not None, got.name
                assert got.quantization.scales == pytest.approx((want.quant.scale,))
                assert got.quantization.zero_points == (want.quant.zero_point,)
                assert got.quantization.axis is None
                assert not got.quantization.per_channel


def test_dynamic_batch_names(zoo: dict[str, ModelSpec]) -> None:
    with load_model(zoo["onnx-mlp"].path) as onnx_runner:
        assert onnx_runner.signature.inputs[0].shape == ("N", 16)
    with load_model(zoo["tflite-mlp"].path) as tflite_runner:
        assert tflite_runner.signature.inputs[0].shape == (None, 16)
    with load_model(zoo["tflite-mlp-static"].path) as static:
        assert static.signature.inputs[0].shape == (1, 16)


def test_image_shapes(zoo: dict[str, ModelSpec]) -> None:
    expected = {
        "onnx-cnn-nchw": ("N", 1, 8, 8), "onnx-cnn-nhwc": ("N", 6, 6, 3),
        "tflite-cnn-nchw": (None, 1, 8, 8), "tflite-cnn-nhwc": (None, 6, 6, 3),
    }
    for key, shape in expected.items():
        with load_model(zoo[key].path) as runner:
            assert runner.signature.inputs[0].name == "image"
            assert runner.signature.inputs[0].shape == shape


def test_tflite_per_channel_input(zoo: dict[str, ModelSpec]) -> None:
    spec = zoo["tflite-per-channel"]
    with load_model(spec.path) as runner:
        q = runner.signature.inputs[0].quantization
        assert q == Quantization((0.5, 0.25, 0.125, 1.0), (0, 3, -5, 10), axis=1)
        assert q.per_channel
        assert runner.signature.outputs[0].quantization is None


def test_onnx_per_channel_input(tmp_path: Path) -> None:
    scales = np.array([0.5, 0.25, 2.0], dtype=np.float32)
    zeros = np.array([0, 4, -2], dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["codes", "s", "z"], ["values"], axis=1)],
        "per_channel",
        [helper.make_tensor_value_info("codes", TensorProto.INT8, ["N", 3])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(scales, "s"), numpy_helper.from_array(zeros, "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "per_channel.onnx"
    onnx.save(model, str(path))
    with load_model(path) as runner:
        q = runner.signature.inputs[0].quantization
        assert q == Quantization((0.5, 0.25, 2.0), (0, 4, -2), axis=1)
        out = runner.predict(np.array([[1.0, 1.0, 4.0]], dtype=np.float32))["values"]
        np.testing.assert_allclose(out, [[1.0, 1.0, 4.0]])
        raw = runner.predict(np.array([[2, 8, 0]], dtype=np.int8), raw=True)["values"]
        np.testing.assert_allclose(raw, [[1.0, 1.0, 4.0]])  # (0 - -2) * 2


def test_float_models_have_no_quantization(zoo: dict[str, ModelSpec]) -> None:
    for key in ("onnx-mlp", "onnx-int-input", "tflite-mlp", "tflite-mlp-f16"):
        with load_model(zoo[key].path) as runner:
            tensors: tuple[TensorSpec, ...] = (*runner.signature.inputs,
                                               *runner.signature.outputs)
            assert all(t.quantization is None for t in tensors), key


@pytest.mark.parametrize("key", ["onnx-multi", "tflite-mlp-uint8", "tflite-per-channel"])
def test_signature_round_trips_through_dict(key: str, zoo: dict[str, ModelSpec]) -> None:
    with load_model(zoo[key].path) as runner:
        data = runner.signature.to_dict()
        assert Signature.from_dict(data) == runner.signature


def test_operators(zoo: dict[str, ModelSpec]) -> None:
    expected = {
        "onnx-mlp": ["MatMul", "Add", "Relu", "Softmax"],
        "onnx-mlp-f16": ["Cast", "MatMul", "Add", "Relu", "Softmax"],
        "tflite-mlp": ["FULLY_CONNECTED", "SOFTMAX"],
        "tflite-mlp-f16": ["DEQUANTIZE", "FULLY_CONNECTED", "SOFTMAX"],
        "tflite-mlp-uint8": ["QUANTIZE", "FULLY_CONNECTED", "SOFTMAX"],
        "tflite-cnn-nchw": ["TRANSPOSE", "CONV_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"],
        "tflite-multi": ["FULLY_CONNECTED", "ADD"],
    }
    for key, ops in expected.items():
        with load_model(zoo[key].path) as runner:
            assert runner.operators() == ops, key
            assert runner.operators() is not runner.operators()  # callers get copies


def test_repr_names_backend_and_file(zoo: dict[str, ModelSpec]) -> None:
    with load_model(zoo["tflite-mlp"].path) as runner:
        assert "TFLiteRunner" in repr(runner) and "mlp.tflite" in repr(runner)
