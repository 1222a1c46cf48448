"""Model files for the agent tests, built once per session from numpy weights.

``zoo`` maps a short key to the :class:`ModelSpec` of a real ONNX or TFLite file; the
keys say the format first (``onnx-...``, ``tflite-...``) so tests can be parametrized
over both backends with the same checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.tools.modelgen import onnx_models, tflite_models
from edgefleet.tools.modelgen.spec import ModelSpec


def _build(root: Path) -> dict[str, ModelSpec]:
    o, t = onnx_models, tflite_models
    return {
        "onnx-mlp": o.mlp(root / "mlp.onnx"),
        "onnx-mlp-logits": o.mlp(root / "mlp_logits.onnx", softmax=False, seed=1),
        "onnx-mlp-static": o.mlp(root / "mlp_static.onnx", dynamic_batch=False),
        "onnx-mlp-f16": o.mlp(root / "mlp_f16.onnx", weight_dtype=np.float16),
        "onnx-cnn-nchw": o.cnn_nchw(root / "cnn_nchw.onnx"),
        "onnx-cnn-nhwc": o.cnn_nhwc(root / "cnn_nhwc.onnx", input_shape=(6, 6, 3)),
        "onnx-multi": o.multi_io(root / "multi.onnx"),
        "onnx-int-input": o.int_input_model(root / "int_input.onnx"),
        "onnx-int8-io": o.mlp_int_io(root / "int8_io.onnx", io_dtype="int8"),
        "onnx-uint8-io": o.mlp_int_io(root / "uint8_io.onnx", io_dtype="uint8"),
        "tflite-mlp": t.mlp(root / "mlp.tflite"),
        "tflite-mlp-logits": t.mlp(root / "mlp_logits.tflite", softmax=False, seed=1),
        "tflite-mlp-static": t.mlp(root / "mlp_static.tflite", dynamic_batch=False),
        "tflite-mlp-f16": t.mlp(root / "mlp_f16.tflite", quantize="float16"),
        "tflite-mlp-int8": t.mlp(root / "mlp_int8.tflite", quantize="int8"),
        "tflite-mlp-uint8": t.mlp(root / "mlp_uint8.tflite", quantize="uint8"),
        "tflite-mlp-int8-logits": t.mlp(root / "mlp_int8_logits.tflite", quantize="int8",
                                        softmax=False),
        "tflite-cnn-nhwc": t.cnn_nhwc(root / "cnn_nhwc.tflite", input_shape=(6, 6, 3)),
        "tflite-cnn-nchw": t.cnn_nchw(root / "cnn_nchw.tflite"),
        "tflite-cnn-nhwc-int8": t.cnn_nhwc(root / "cnn_nhwc_int8.tflite", quantize="int8"),
        "tflite-cnn-nchw-uint8": t.cnn_nchw(root / "cnn_nchw_uint8.tflite", quantize="uint8",
                                            softmax=False),
        "tflite-multi": t.multi_io(root / "multi.tflite"),
        "tflite-per-channel": t.per_channel_io(root / "per_channel.tflite"),
    }


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSpec]:
    """Every test model, keyed ``<format>-<kind>``."""
    return _build(tmp_path_factory.mktemp("agent_models"))
