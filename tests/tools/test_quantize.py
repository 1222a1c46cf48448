"""ONNX post-training quantization on the digits MLP, with the accuracy gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefleet.agent.runtime import load_model
from edgefleet.agent.runtime.errors import ModelLoadError
from edgefleet.tools.cli import cli
from edgefleet.tools.errors import AccuracyGateError, QuantizationError, ToolInputError
from edgefleet.tools.inspect_model import inspect_model
from edgefleet.tools.modelgen.digits import DigitsArtifacts
from edgefleet.tools.modelgen.spec import ModelSpec
from edgefleet.tools.quantize import (
    IntType,
    QuantizeOptions,
    QuantizeReport,
    QuantMode,
    quantize_model,
)


def _quantize(digits: DigitsArtifacts, out: Path, options: QuantizeOptions,
              labels: bool = True) -> QuantizeReport:
    return quantize_model(
        digits.float_model, out, options, calibration=digits.calibration,
        eval_x=digits.eval_x, eval_y=digits.eval_y if labels else None,
    )


@pytest.mark.parametrize(
    "options",
    [
        QuantizeOptions(mode=QuantMode.DYNAMIC),
        QuantizeOptions(mode=QuantMode.DYNAMIC, weight_type=IntType.UINT8),
        QuantizeOptions(mode=QuantMode.STATIC),
        QuantizeOptions(mode=QuantMode.STATIC, per_channel=True),
        QuantizeOptions(mode=QuantMode.STATIC, activation_type=IntType.INT8),
    ],
    ids=["dynamic-int8", "dynamic-uint8", "static", "static-per-channel", "static-s8s8"],
)
def test_quantize_keeps_accuracy_and_shrinks(
    digits: DigitsArtifacts, tmp_path: Path, options: QuantizeOptions
) -> None:
    out = tmp_path / "q.onnx"
    report = _quantize(digits, out, options)
    assert report.written and out.is_file()
    assert report.quantized_size_bytes == out.stat().st_size
    assert report.float_size_bytes == digits.float_model.stat().st_size
    assert report.size_ratio < 1.0
    assert report.eval_samples == len(np.load(digits.eval_y))
    assert report.float_accuracy == pytest.approx(digits.mlp_accuracy)
    assert report.accuracy_change_points is not None
    assert report.accuracy_change_points >= -options.max_accuracy_drop
    assert [e.name for e in report.output_errors] == ["probabilities"]
    assert 0 < report.output_errors[0].mean_abs <= report.output_errors[0].max_abs < 1
    # The written model really is quantized and really classifies digits.
    info = inspect_model(out)
    assert info.quantized
    assert info.dynamic_activations is (options.mode is QuantMode.DYNAMIC)
    assert any(t.per_channel for t in info.quantized_tensors) is options.per_channel
    with load_model(out) as runner:
        probs = runner.predict(np.load(digits.eval_x))["probabilities"]
    accuracy = np.mean(probs.argmax(axis=1) == np.load(digits.eval_y))
    assert accuracy == pytest.approx(report.quantized_accuracy)
    assert not [p for p in tmp_path.iterdir() if p.name != "q.onnx"]  # no temp leftovers


def test_output_error_only_without_labels(digits: DigitsArtifacts, tmp_path: Path) -> None:
    report = _quantize(digits, tmp_path / "q.onnx", QuantizeOptions(), labels=False)
    assert report.written
    assert report.float_accuracy is None and report.accuracy_change_points is None
    assert report.output_errors and report.output_errors[0].max_abs > 0
    assert "max abs diff" in report.to_text()


def test_without_eval_data_only_size_is_reported(digits: DigitsArtifacts, tmp_path: Path) -> None:
    report = quantize_model(digits.float_model, tmp_path / "q.onnx")
    assert report.written and report.eval_samples == 0 and report.output_errors == ()
    assert "not checked" in report.to_text()


def test_gate_refuses_and_writes_nothing(digits: DigitsArtifacts, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    # A negative allowed drop demands an improvement of 100 points: impossible.
    with pytest.raises(AccuracyGateError) as info:
        _quantize(digits, out, QuantizeOptions(max_accuracy_drop=-100.0))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    report = info.value.report
    assert report.written is False
    assert report.accuracy_change_points is not None
    assert "not written" in str(info.value)


def test_gate_leaves_an_existing_output_untouched(digits: DigitsArtifacts, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    out.write_bytes(b"previous model")
    with pytest.raises(AccuracyGateError):
        _quantize(digits, out, QuantizeOptions(mode=QuantMode.STATIC, max_accuracy_drop=-100.0))
    assert out.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]


def test_output_error_gate(digits: DigitsArtifacts, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    with pytest.raises(AccuracyGateError, match="differs from the float model"):
        _quantize(digits, out, QuantizeOptions(max_output_error=1e-9), labels=False)
    assert not out.exists()
    report = _quantize(digits, out, QuantizeOptions(max_output_error=1.0), labels=False)
    assert report.written


def test_input_errors(digits: DigitsArtifacts, tmp_path: Path, small_tflite: ModelSpec) -> None:
    out = tmp_path / "q.onnx"
    with pytest.raises(ToolInputError, match="calibration"):
        quantize_model(digits.float_model, out, QuantizeOptions(mode=QuantMode.STATIC))
    with pytest.raises(ToolInputError, match="labels given without"):
        quantize_model(digits.float_model, out, eval_y=digits.eval_y)
    with pytest.raises(ToolInputError, match="ONNX"):
        quantize_model(small_tflite.path, out)
    with pytest.raises(ToolInputError, match="no such file"):
        quantize_model(digits.float_model, out, eval_x=tmp_path / "missing.npy")
    with pytest.raises(ToolInputError, match="must differ"):
        quantize_model(digits.float_model, digits.float_model)
    with pytest.raises(ToolInputError, match="no such directory"):
        quantize_model(digits.float_model, tmp_path / "nowhere" / "q.onnx")
    (tmp_path / "adir").mkdir()
    with pytest.raises(ToolInputError, match="is a directory"):
        quantize_model(digits.float_model, tmp_path / "adir")
    (tmp_path / "adir").rmdir()
    x = np.load(digits.eval_x)
    with pytest.raises(ToolInputError, match="labels for"):
        quantize_model(digits.float_model, out, eval_x=x, eval_y=np.zeros(3, dtype=np.int64))
    with pytest.raises(ToolInputError, match="labels must be"):
        quantize_model(digits.float_model, out, eval_x=x, eval_y=x[:, 0])
    with pytest.raises(ToolInputError, match="does not fit"):
        quantize_model(digits.float_model, out, eval_x=x[:, :10])
    with pytest.raises(ToolInputError, match="do not match the model inputs"):
        quantize_model(digits.float_model, out, eval_x={"pixels": x})
    with pytest.raises(ModelLoadError):
        quantize_model(tmp_path / "missing.onnx", out)
    assert not out.exists()


def test_quantizer_failure_is_a_quantization_error(digits: DigitsArtifacts, tmp_path: Path) -> None:
    """The logistic regression is one ai.onnx.ml op: nothing onnxruntime can quantize."""
    out = tmp_path / "q.onnx"
    with pytest.raises(QuantizationError):
        quantize_model(digits.logreg_model, out)
    assert list(tmp_path.iterdir()) == []


# -- CLI -------------------------------------------------------------------------------


def test_cli_static_quantize(digits: DigitsArtifacts, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(cli, [
        "model", "quantize", str(digits.float_model), str(out), "--mode", "static",
        "--calibration", str(digits.calibration), "--eval", str(digits.eval_x),
        "--labels", str(digits.eval_y), "--per-channel",
    ])
    assert result.exit_code == 0, result.output
    assert "size:" in result.output and "ratio" in result.output
    assert "points" in result.output and f"wrote {out}" in result.output
    assert out.is_file()


def test_cli_json_report(digits: DigitsArtifacts, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(cli, [
        "model", "quantize", str(digits.float_model), str(out), "--eval", str(digits.eval_x),
        "--labels", str(digits.eval_y), "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["written"] is True and data["mode"] == "dynamic"
    assert data["size_ratio"] < 1.0
    assert data["accuracy_change_points"] >= -1.0
    assert data["output_errors"][0]["name"] == "probabilities"


def test_cli_gate_refusal(digits: DigitsArtifacts, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(cli, [
        "model", "quantize", str(digits.float_model), str(out), "--eval", str(digits.eval_x),
        "--labels", str(digits.eval_y), "--max-accuracy-drop", "-100",
    ])
    assert result.exit_code == 1
    assert "not written" in result.output
    assert not out.exists()


@pytest.mark.parametrize("case", ["static-no-calibration", "missing-model", "bad-labels"])
def test_cli_errors_are_one_line(digits: DigitsArtifacts, tmp_path: Path, case: str) -> None:
    out = tmp_path / "q.onnx"
    bad = tmp_path / "labels.npy"
    shutil.copy(digits.eval_x, bad)
    args = {
        "static-no-calibration": [str(digits.float_model), str(out), "--mode", "static"],
        "missing-model": [str(tmp_path / "nope.onnx"), str(out)],
        "bad-labels": [str(digits.float_model), str(out), "--eval", str(digits.eval_x),
                       "--labels", str(bad)],
    }[case]
    result = CliRunner().invoke(cli, ["model", "quantize", *args])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert not out.exists()
