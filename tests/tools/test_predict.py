"""`edgefleet agent predict`: in-process (CliRunner) and as a real `edgefleet` process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefleet.tools.cli import cli
from edgefleet.tools.modelgen.spec import ModelSpec
from tests.tools.conftest import EDGEFLEET, sample

Invoke = Callable[[list[str], str | None], tuple[int, str, str]]


def _in_process(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner(mix_stderr=False).invoke(cli, args, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def _subprocess(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    proc = subprocess.run([str(EDGEFLEET), *args], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout, proc.stderr


INVOKERS = {"clirunner": _in_process, "subprocess": _subprocess}


def _write_input(
    kind: str, inputs: dict[str, np.ndarray], tmp_path: Path
) -> tuple[str, str | None]:
    """Return (--input value, stdin text) for one input form."""
    if kind == "npy":
        (only,) = inputs.values()
        np.save(tmp_path / "x.npy", only)
        return str(tmp_path / "x.npy"), None
    if kind == "npz":
        np.savez(tmp_path / "x.npz", **inputs)  # type: ignore[arg-type]
        return str(tmp_path / "x.npz"), None
    text = json.dumps({k: v.tolist() for k, v in inputs.items()})
    if kind == "json":
        (tmp_path / "x.json").write_text(text)
        return str(tmp_path / "x.json"), None
    return "-", text


def _check_outputs(stdout: str, spec: ModelSpec, inputs: dict[str, np.ndarray]) -> None:
    outputs = json.loads(stdout)  # exactly one JSON object on stdout
    assert isinstance(outputs, dict) and list(outputs) == list(spec.output_names)
    if spec.outputs[0].quant is None:
        expected = spec.reference(inputs)
        atol = spec.atol
    else:
        expected = spec.float_reference(inputs)
        atol = spec.float_atol
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(outputs[name], dtype=np.float32), value,
                                   atol=atol, rtol=1e-4)


@pytest.mark.parametrize("invoker", sorted(INVOKERS))
@pytest.mark.parametrize("kind", ["npy", "npz", "json", "stdin"])
@pytest.mark.parametrize("model", ["small_onnx", "small_tflite", "int8_tflite"])
def test_predict_single_input(
    request: pytest.FixtureRequest, tmp_path: Path, invoker: str, kind: str, model: str
) -> None:
    spec: ModelSpec = request.getfixturevalue(model)
    inputs = sample(spec, batch=3)
    value, stdin = _write_input(kind, inputs, tmp_path)
    code, out, err = INVOKERS[invoker](
        ["agent", "predict", "--model", str(spec.path), "--input", value], stdin
    )
    assert code == 0, err
    assert err == "" or invoker == "clirunner"  # native INFO lines are filtered out
    _check_outputs(out, spec, inputs)


@pytest.mark.parametrize("invoker", sorted(INVOKERS))
@pytest.mark.parametrize("kind", ["npz", "json", "stdin"])
def test_predict_multi_input(
    multi_onnx: ModelSpec, tmp_path: Path, invoker: str, kind: str
) -> None:
    inputs = sample(multi_onnx, batch=2)
    value, stdin = _write_input(kind, inputs, tmp_path)
    code, out, err = INVOKERS[invoker](
        ["agent", "predict", "--model", str(multi_onnx.path), "--input", value], stdin
    )
    assert code == 0, err
    _check_outputs(out, multi_onnx, inputs)


# -- every error path: non-zero exit, one line on stderr, nothing on stdout --------------

ErrorCase = Callable[[Path, ModelSpec, ModelSpec, ModelSpec], tuple[list[str], str | None, str]]


def _args(model: Path, value: str) -> list[str]:
    return ["agent", "predict", "--model", str(model), "--input", value]


def _npy(tmp: Path, array: np.ndarray, name: str = "x.npy") -> str:
    np.save(tmp / name, array)
    return str(tmp / name)


def _text(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


GOOD = np.zeros((2, 8), dtype=np.float32)

ERROR_CASES: dict[str, ErrorCase] = {
    "missing model file": lambda t, o, tf, m: (
        _args(t / "nope.onnx", _npy(t, GOOD)), None, "no such file"),
    "non-model file": lambda t, o, tf, m: (
        _args(Path(_text(t, "m.onnx", b"hello, not a model")), _npy(t, GOOD)), None,
        "cannot load model"),
    "truncated tflite": lambda t, o, tf, m: (
        _args(Path(_text(t, "m.tflite", tf.path.read_bytes()[:100])), _npy(t, GOOD)), None,
        "cannot load model"),
    "missing input file": lambda t, o, tf, m: (
        _args(o.path, str(t / "missing.npy")), None, "no such file"),
    "unsupported input type": lambda t, o, tf, m: (
        _args(o.path, _text(t, "x.txt", "1 2 3")), None, "unsupported input file type"),
    "corrupt npy": lambda t, o, tf, m: (
        _args(o.path, _text(t, "x.npy", b"\x93NUMPY garbage")), None, "not a readable"),
    "bad json file": lambda t, o, tf, m: (
        _args(o.path, _text(t, "x.json", '{"input": [[1, 2]')), None, "invalid JSON"),
    "bad json stdin": lambda t, o, tf, m: (_args(o.path, "-"), "{nope", "invalid JSON"),
    "empty stdin": lambda t, o, tf, m: (_args(o.path, "-"), "", "invalid JSON"),
    "json not an object": lambda t, o, tf, m: (_args(o.path, "-"), '"hello"', "expected a JSON"),
    "json ragged": lambda t, o, tf, m: (
        _args(o.path, "-"), '{"input": [[1, 2], [3]]}', "unequal lengths"),
    "json strings": lambda t, o, tf, m: (
        _args(o.path, "-"), '{"input": [["a", "b"]]}', "expected numbers"),
    "wrong shape onnx": lambda t, o, tf, m: (
        _args(o.path, _npy(t, np.zeros((2, 5), np.float32))), None, "expected shape"),
    "wrong shape tflite": lambda t, o, tf, m: (
        _args(tf.path, _npy(t, np.zeros((2, 5), np.float32))), None, "expected shape"),
    "wrong dtype": lambda t, o, tf, m: (
        _args(o.path, _npy(t, np.zeros((2, 8), np.complex64))), None, "input 'input'"),
    "unknown input name": lambda t, o, tf, m: (
        _args(o.path, "-"), '{"pixels": [[0, 0, 0, 0, 0, 0, 0, 0]]}', "input 'pixels'"),
    "npy for multi-input model": lambda t, o, tf, m: (
        _args(m.path, _npy(t, GOOD)), None, "mapping of the 2 inputs"),
    "missing input in npz": lambda t, o, tf, m: (
        _args(m.path, str(_savez(t, features=np.zeros((1, 8), np.float32)))), None,
        "input 'bias'"),
    "nan input": lambda t, o, tf, m: (
        _args(tf.path, _npy(t, np.full((1, 8), np.nan, np.float32))), None, "NaN"),
    "empty batch": lambda t, o, tf, m: (
        _args(o.path, _npy(t, np.zeros((0, 8), np.float32))), None, "at least one sample"),
}


def _savez(tmp: Path, **arrays: np.ndarray) -> Path:
    np.savez(tmp / "x.npz", **arrays)  # type: ignore[arg-type]
    return tmp / "x.npz"


@pytest.mark.parametrize("invoker", sorted(INVOKERS))
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_paths(
    tmp_path: Path, small_onnx: ModelSpec, small_tflite: ModelSpec, multi_onnx: ModelSpec,
    invoker: str, case: str,
) -> None:
    args, stdin, fragment = ERROR_CASES[case](tmp_path, small_onnx, small_tflite, multi_onnx)
    code, out, err = INVOKERS[invoker](args, stdin)
    assert code == 1, (out, err)
    assert out == ""
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert fragment in err


@pytest.mark.parametrize("invoker", sorted(INVOKERS))
def test_usage_errors_exit_2(small_onnx: ModelSpec, invoker: str) -> None:
    code, out, err = INVOKERS[invoker](["agent", "predict", "--model", str(small_onnx.path)], None)
    assert code == 2 and out == "" and "--input" in err
