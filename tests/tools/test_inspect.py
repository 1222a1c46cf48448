"""`edgefleet model inspect`: signature, operators, size, quantization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.agent.runtime import Framework
from edgefleet.agent.runtime.errors import ModelLoadError
from edgefleet.tools.cli import cli
from edgefleet.tools.inspect_model import inspect_model
from edgefleet.tools.modelgen import tflite_models
from edgefleet.tools.modelgen.digits import DigitsArtifacts
from edgefleet.tools.modelgen.spec import ModelSpec
from edgefleet.tools.quantize import QuantizeOptions, QuantMode, quantize_model


@pytest.fixture(scope="module")
def quantized(digits: DigitsArtifacts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("quantized")
    paths = {"dynamic": out / "dynamic.onnx", "static": out / "static_pc.onnx"}
    quantize_model(digits.float_model, paths["dynamic"])
    quantize_model(digits.float_model, paths["static"],
                   QuantizeOptions(mode=QuantMode.STATIC, per_channel=True),
                   calibration=digits.calibration)
    return paths


def test_float_onnx(digits: DigitsArtifacts) -> None:
    info = inspect_model(digits.float_model)
    assert info.framework is Framework.ONNX
    assert info.size_bytes == digits.float_model.stat().st_size
    assert info.signature.input_names == ("input",)
    assert info.signature.inputs[0].shape == (None, 64)
    assert {"MatMul", "Relu", "Softmax"} <= set(info.operators)
    assert not info.quantized and info.quantized_tensors == ()
    assert info.weight_elements["float32"] == 64 * 64 + 64 + 64 * 10 + 10
    assert "quantization: none" in info.to_text()


def test_dynamic_onnx(quantized: dict[str, Path]) -> None:
    info = inspect_model(quantized["dynamic"])
    assert info.quantized and info.dynamic_activations
    assert "MatMulInteger" in info.operators
    weights = [t for t in info.quantized_tensors if t.role == "weight"]
    assert sorted(t.shape for t in weights) == [(64, 10), (64, 64)]
    assert all(t.dtype == "int8" and not t.per_channel and t.axis is None for t in weights)
    assert all(len(t.scales) == 1 and t.scales[0] > 0 for t in weights)
    assert "activations quantized at run time" in info.to_text()


def test_static_per_channel_onnx(quantized: dict[str, Path]) -> None:
    info = inspect_model(quantized["static"])
    assert not info.dynamic_activations
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(info.operators)
    weights = {t.shape: t for t in info.quantized_tensors if t.dtype == "int8"}
    w = weights[(64, 64)]
    assert w.per_channel and w.axis == 1 and len(w.scales) == 64
    activations = [t for t in info.quantized_tensors if t.role == "activation"]
    assert activations and all(not t.per_channel for t in activations)
    assert any(t.name == "input" for t in activations)
    text = info.to_text()
    assert "per-channel axis=1, 64 channels" in text
    assert "input (activation, uint8): per-tensor scale=" in text


def test_tflite_int8(int8_tflite: ModelSpec) -> None:
    info = inspect_model(int8_tflite.path)
    assert info.framework is Framework.TFLITE
    assert info.operators == ("FULLY_CONNECTED", "SOFTMAX")
    inp = info.signature.inputs[0]
    assert inp.dtype.name == "int8" and inp.quantization is not None
    weight = next(t for t in info.quantized_tensors if t.name == "dense0.weight")
    assert weight.role == "weight" and weight.per_channel and weight.axis == 0
    assert len(weight.scales) == 16
    assert info.weight_elements["int8"] == 8 * 16 + 16 * 3
    softmax_out = next(t for t in info.quantized_tensors if t.name == "probabilities")
    assert softmax_out.scales == (1 / 256,) and softmax_out.zero_points == (-128,)


def test_tflite_float(small_tflite: ModelSpec, tmp_path: Path) -> None:
    info = inspect_model(small_tflite.path)
    assert not info.quantized
    assert info.weight_elements == {"float32": 8 * 16 + 16 + 16 * 3 + 3}
    fp16 = tflite_models.mlp(tmp_path / "f16.tflite", sizes=(8, 16, 3), quantize="float16")
    info16 = inspect_model(fp16.path)
    assert "DEQUANTIZE" in info16.operators and info16.weight_elements.get("float16")


def test_cli_text_and_json(quantized: dict[str, Path]) -> None:
    runner = CliRunner()
    text = runner.invoke(cli, ["model", "inspect", str(quantized["static"])])
    assert text.exit_code == 0, text.output
    for word in ("framework:  onnx", "inputs:", "outputs:", "operators:", "size:",
                 "quantization:"):
        assert word in text.output
    result = runner.invoke(cli, ["model", "inspect", str(quantized["static"]), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["framework"] == "onnx"
    assert data["signature"]["inputs"][0]["name"] == "input"
    assert data["quantization"]["quantized"] is True
    assert data["quantization"]["per_channel_tensors"] >= 2
    tensor = data["quantization"]["tensors"][0]
    assert {"name", "role", "dtype", "scales", "zero_points", "axis", "per_channel"} <= set(tensor)


def test_cli_tflite_json(int8_tflite: ModelSpec) -> None:
    result = CliRunner().invoke(cli, ["model", "inspect", str(int8_tflite.path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["framework"] == "tflite"
    assert data["signature"]["inputs"][0]["quantization"]["zero_points"]


@pytest.mark.parametrize("content", [None, b"", b"not a model at all"])
def test_bad_files(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        inspect_model(path)
    result = CliRunner().invoke(cli, ["model", "inspect", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot load model") and result.output.count("\n") == 1
