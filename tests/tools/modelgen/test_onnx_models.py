"""The ONNX builders write models that onnxruntime runs as their numpy references say."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.tools.modelgen import onnx_models
from edgefleet.tools.modelgen.spec import Framework, ModelGenError, ModelSpec, Precision

BUILDERS: dict[str, Callable[[Path], ModelSpec]] = {
    "mlp": onnx_models.mlp,
    "mlp-logits-static": lambda p: onnx_models.mlp(p, softmax=False, dynamic_batch=False),
    "mlp-f16": lambda p: onnx_models.mlp(p, weight_dtype=np.float16),
    "cnn-nchw": onnx_models.cnn_nchw,
    "cnn-nhwc": lambda p: onnx_models.cnn_nhwc(p, input_shape=(5, 4, 2)),
    "multi-io": onnx_models.multi_io,
    "int-input": onnx_models.int_input_model,
    "int8-io": lambda p: onnx_models.mlp_int_io(p, io_dtype="int8"),
    "uint8-io": lambda p: onnx_models.mlp_int_io(p, sizes=(6, 3), io_dtype="uint8"),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_builder_matches_reference(kind: str, tmp_path: Path) -> None:
    spec = BUILDERS[kind](tmp_path / f"{kind}.onnx")
    assert spec.framework is Framework.ONNX
    onnx.checker.check_model(onnx.load(str(spec.path)), full_check=True)
    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(spec.input_names)
    batches = (1,) if spec.inputs[0].shape[0] == 1 else (1, 5)
    for batch in batches:
        inputs = spec.random_inputs(batch, seed=batch)
        outputs = dict(zip(spec.output_names, session.run(None, inputs), strict=True))
        want = spec.reference(inputs)
        for info in spec.outputs:
            got = outputs[info.name]
            assert got.dtype == np.dtype(info.dtype)
            diff = np.abs(got.astype(np.float64) - want[info.name].astype(np.float64))
            assert diff.max() <= spec.atol, info.name


def test_int_io_spec_carries_quantization(tmp_path: Path) -> None:
    spec = onnx_models.mlp_int_io(tmp_path / "q.onnx", io_dtype="uint8")
    assert spec.precision is Precision.UINT8
    q_in, q_out = spec.inputs[0].quant, spec.outputs[0].quant
    assert q_in is not None and q_out is not None
    assert 0 <= q_in.zero_point <= 255 and q_in.scale == pytest.approx(2 / 255)
    real = spec.random_float_inputs(4)
    got = spec.dequantize_outputs(spec.reference(spec.quantize_inputs(real)))["logits"]
    want = spec.float_reference(real)["logits"]
    assert np.abs(got - want).max() <= spec.float_atol


def test_int_io_rejects_other_dtypes(tmp_path: Path) -> None:
    with pytest.raises(ModelGenError, match="int8 or uint8"):
        onnx_models.mlp_int_io(tmp_path / "q.onnx", io_dtype="int16")
