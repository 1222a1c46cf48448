"""Anything that is not a loadable model gives ModelLoadError naming the file and why.

Every case loads a good model afterwards in the same process: a bad file never leaves
the runtime (or the process) broken.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.runtime import load_model
from edgefleet.agent.runtime.errors import ModelLoadError, RuntimeFault
from edgefleet.tools.modelgen import tflite_models
from edgefleet.tools.modelgen.spec import ModelSpec


def assert_still_works(zoo: dict[str, ModelSpec]) -> None:
    for key in ("onnx-mlp", "tflite-mlp-int8"):
        spec = zoo[key]
        with load_model(spec.path) as runner:
            inputs = spec.random_inputs(2)
            out = runner.predict(inputs, raw=True)[spec.output_names[0]]
            want = spec.reference(inputs)[spec.output_names[0]]
            assert np.abs(out.astype(float) - want.astype(float)).max() <= spec.atol


def expect_load_error(path: Path, match: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError, match=match) as e:
        load_model(path)
    assert e.value.path == path
    assert str(path) in str(e.value)
    assert e.value.reason and e.value.reason in str(e.value)
    assert isinstance(e.value, RuntimeFault)
    return e.value


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def onnx_with(tmp_path: Path, name: str, node: onnx.NodeProto, opset: int = 17,
              domain: str = "") -> Path:
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)],
                              ir_version=8)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


CASES: dict[str, tuple[Callable[[Path, dict[str, ModelSpec]], Path], str]] = {
    "missing": (lambda d, z: d / "nope.onnx", "no such file"),
    "directory": (lambda d, z: d, "is a directory"),
    "empty-onnx": (lambda d, z: write(d / "e.onnx", b""), "empty"),
    "empty-tflite": (lambda d, z: write(d / "e.tflite", b""), "empty"),
    "random-bytes": (
        lambda d, z: write(d / "r.onnx", np.random.default_rng(1).bytes(4096)),
        "not a TFLite flatbuffer or an ONNX protobuf|truncated|not an ONNX model",
    ),
    "random-tflite": (
        lambda d, z: write(d / "r.tflite", np.random.default_rng(2).bytes(4096)),
        "not a TFLite flatbuffer or an ONNX protobuf|truncated|not an ONNX model",
    ),
    "text": (lambda d, z: write(d / "notes.onnx", b"hello, this is not a model\n" * 20),
             "not"),
    "npy": (lambda d, z: _npy(d / "data.npy"), "not"),
    "truncated-onnx": (
        lambda d, z: write(d / "t.onnx", z["onnx-mlp"].path.read_bytes()[:-100]),
        "truncated",
    ),
    "truncated-onnx-head": (
        lambda d, z: write(d / "h.onnx", z["onnx-cnn-nchw"].path.read_bytes()[:40]),
        "truncated|not an ONNX model",
    ),
    "truncated-tflite": (
        lambda d, z: write(d / "t.tflite", z["tflite-mlp"].path.read_bytes()[:-64]),
        "truncated|LiteRT cannot load it",
    ),
    "truncated-tflite-half": (
        lambda d, z: write(d / "h.tflite", _half(z["tflite-mlp-int8"].path)),
        "truncated|LiteRT cannot load it",
    ),
    "tflite-named-onnx": (
        lambda d, z: write(d / "m.onnx", z["tflite-mlp"].path.read_bytes()),
        "extension '.onnx' says onnx but the content is tflite",
    ),
    "onnx-named-tflite": (
        lambda d, z: write(d / "m.tflite", z["onnx-mlp"].path.read_bytes()),
        "extension '.tflite' says tflite but the content is onnx",
    ),
    "onnx-unknown-op": (
        lambda d, z: onnx_with(d, "op.onnx", helper.make_node("Frobnicate", ["x"], ["y"])),
        "onnxruntime cannot load it.*Frobnicate",
    ),
    "onnx-unknown-domain": (
        lambda d, z: onnx_with(d, "dom.onnx",
                               helper.make_node("Relu", ["x"], ["y"], domain="com.nowhere"),
                               opset=1, domain="com.nowhere"),
        "onnxruntime cannot load it",
    ),
    "onnx-future-opset": (
        lambda d, z: onnx_with(d, "opset.onnx", helper.make_node("Relu", ["x"], ["y"]),
                               opset=999),
        "onnxruntime cannot load it.*opset",
    ),
    "onnx-qdq-axis-out-of-range": (
        lambda d, z: _bad_axis(d / "axis.onnx"),
        "invalid tensor description: quantization axis 3 out of range for rank 2",
    ),
    "tflite-custom-op": (
        lambda d, z: tflite_models.custom_op(d / "custom.tflite", "EdgefleetMystery"),
        "LiteRT cannot load it.*EdgefleetMystery",
    ),
}


def _bad_axis(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["codes", "s", "z"], ["values"], axis=3)], "g",
        [helper.make_tensor_value_info("codes", TensorProto.INT8, ["N", 3])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.ones(3, np.float32), "s"),
         numpy_helper.from_array(np.zeros(3, np.int8), "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def _npy(path: Path) -> Path:
    np.save(path, np.arange(100, dtype=np.float32))
    return path


def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("case", list(CASES))
def test_load_error(case: str, tmp_path: Path, zoo: dict[str, ModelSpec]) -> None:
    make, match = CASES[case]
    path = make(tmp_path, zoo)
    expect_load_error(path, match)
    assert_still_works(zoo)


def test_unreadable_file(tmp_path: Path, zoo: dict[str, ModelSpec]) -> None:
    path = write(tmp_path / "locked.onnx", zoo["onnx-mlp"].path.read_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # running as root: permissions do not stop reads
            path = tmp_path / "missing-dir" / "m.onnx"
            expect_load_error(path, "no such file")
        else:
            expect_load_error(path, "cannot read it")
    finally:
        (tmp_path / "locked.onnx").chmod(0o600)


def test_unknown_extension_is_decided_by_content(tmp_path: Path, zoo: dict[str, ModelSpec]) -> None:
    for key, name in (("onnx-mlp", "model.bin"), ("tflite-mlp", "model")):
        path = write(tmp_path / name, zoo[key].path.read_bytes())
        with load_model(path) as runner:
            assert runner.framework.value == key.split("-")[0]


def test_every_truncation_of_a_tflite_model_is_refused(
    tmp_path: Path, zoo: dict[str, ModelSpec]
) -> None:
    data = zoo["tflite-mlp-uint8"].path.read_bytes()
    path = tmp_path / "cut.tflite"
    for cut in range(8, len(data), max(1, len(data) // 97)):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError):
            load_model(path)
    assert_still_works(zoo)


def test_every_truncation_of_an_onnx_model_is_refused(
    tmp_path: Path, zoo: dict[str, ModelSpec]
) -> None:
    data = zoo["onnx-multi"].path.read_bytes()
    path = tmp_path / "cut.onnx"
    for cut in range(1, len(data), max(1, len(data) // 97)):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError):
            load_model(path)
    assert_still_works(zoo)


CORRUPT_SCRIPT = """
import random, sys
from pathlib import Path
from edgefleet.agent.runtime import load_model
from edgefleet.agent.runtime.errors import ModelLoadError
data = Path(sys.argv[1]).read_bytes()
out = Path(sys.argv[2])
rng = random.Random(0)
refused = 0
for i in range(150):
    b = bytearray(data)
    for _ in range(4):
        b[rng.randrange(8, len(b))] = rng.randrange(256)
    out.write_bytes(bytes(b))
    try:
        with load_model(out) as r:
            r.operators()
    except ModelLoadError:
        refused += 1
print("survived", refused)
"""


def test_corrupted_tflite_bytes_never_crash_the_process(
    tmp_path: Path, zoo: dict[str, ModelSpec]
) -> None:
    # In a child process: if native code crashed, the test reports it instead of dying.
    result = subprocess.run(
        [sys.executable, "-c", CORRUPT_SCRIPT, str(zoo["tflite-mlp-int8"].path),
         str(tmp_path / "corrupt.tflite")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "survived" in result.stdout
