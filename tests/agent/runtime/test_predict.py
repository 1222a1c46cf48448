"""predict on both backends against the numpy references of the built models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtime import ModelRunner, RunnerOptions, load_model
from edgefleet.tools.modelgen import onnx_models
from edgefleet.tools.modelgen.spec import ModelSpec

FLOAT_KEYS = [
    "onnx-mlp", "onnx-mlp-logits", "onnx-mlp-f16", "onnx-cnn-nchw", "onnx-cnn-nhwc",
    "onnx-multi", "onnx-int-input",
    "tflite-mlp", "tflite-mlp-logits", "tflite-mlp-f16", "tflite-cnn-nhwc", "tflite-cnn-nchw",
    "tflite-multi",
]
QUANT_KEYS = [
    "onnx-int8-io", "onnx-uint8-io",
    "tflite-mlp-int8", "tflite-mlp-uint8", "tflite-mlp-int8-logits",
    "tflite-cnn-nhwc-int8", "tflite-cnn-nchw-uint8",
]


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float) -> None:
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].shape == array.shape, name
        diff = np.abs(got[name].astype(np.float64) - array.astype(np.float64))
        assert diff.max() <= atol, (name, float(diff.max()))


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_float_models_match_reference_for_several_batches(
    key: str, zoo: dict[str, ModelSpec]
) -> None:
    spec = zoo[key]
    with load_model(spec.path) as runner:
        for batch in (1, 3, 8, 3, 1):  # growing, shrinking and repeated batch sizes
            inputs = spec.random_inputs(batch, seed=batch)
            got = runner.predict(inputs)
            assert_close(got, spec.reference(inputs), spec.atol)
            for info in spec.outputs:
                assert got[info.name].dtype == np.float32


@pytest.mark.parametrize("key", QUANT_KEYS)
def test_quantized_raw_io_matches_integer_reference(key: str, zoo: dict[str, ModelSpec]) -> None:
    spec = zoo[key]
    with load_model(spec.path) as runner:
        for batch in (1, 5, 2):
            inputs = spec.random_inputs(batch, seed=10 + batch)
            got = runner.predict(inputs, raw=True)
            for info in spec.outputs:
                assert got[info.name].dtype == np.dtype(info.dtype)
            assert_close(got, spec.reference(inputs), spec.atol)


@pytest.mark.parametrize("key", QUANT_KEYS)
def test_quantized_models_take_and_return_real_values(
    key: str, zoo: dict[str, ModelSpec]
) -> None:
    spec = zoo[key]
    with load_model(spec.path) as runner:
        real = spec.random_float_inputs(6, seed=3)
        got = runner.predict(real)
        for name in spec.output_names:
            assert got[name].dtype == np.float32
        # Same as quantizing by hand, running raw and dequantizing (within atol steps).
        expected = spec.dequantize_outputs(spec.reference(spec.quantize_inputs(real)))
        for info in spec.outputs:
            assert info.quant is not None
            diff = np.abs(got[info.name] - expected[info.name]).max()
            assert diff <= spec.atol * info.quant.scale + 1e-6, info.name
        # And close to the float network.
        assert_close(got, spec.float_reference(real), spec.float_atol)


def test_quantized_inputs_saturate_out_of_range_values(zoo: dict[str, ModelSpec]) -> None:
    spec = zoo["tflite-mlp-int8-logits"]
    with load_model(spec.path) as runner:
        huge = np.full((1, 16), 1e6, dtype=np.float32)
        top = np.full((1, 16), spec.inputs[0].value_range[1] + 0.5, dtype=np.float32)
        np.testing.assert_array_equal(runner.predict(huge)["logits"], runner.predict(top)["logits"])


def test_per_channel_tflite_input(zoo: dict[str, ModelSpec]) -> None:
    spec = zoo["tflite-per-channel"]
    scales = np.array([0.5, 0.25, 0.125, 1.0], dtype=np.float32)
    with load_model(spec.path) as runner:
        values = np.array([[1.0, -2.0, 0.5, 7.0], [0.26, 0.1, -0.06, -3.0]], dtype=np.float32)
        got = runner.predict(values)["values"]
        assert np.all(np.abs(got - values) <= scales / 2 + 1e-6)
        codes = np.array([[0, 3, -5, 10], [2, 7, 3, 0]], dtype=np.int8)
        raw = runner.predict(codes, raw=True)["values"]
        np.testing.assert_allclose(raw, spec.reference({"codes": codes})["values"])


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_multi_io_accepts_lists_and_returns_outputs_in_model_order(
    fmt: str, zoo: dict[str, ModelSpec]
) -> None:
    spec = zoo[f"{fmt}-multi"]
    inputs = spec.random_inputs(2, seed=5)
    with load_model(spec.path) as runner:
        # Keys in another order, values as nested lists of Python floats.
        got = runner.predict({"bias": inputs["bias"].tolist(),
                              "features": inputs["features"].tolist()})
        assert list(got) == ["scores", "embedding"]
        assert_close(got, spec.reference(inputs), spec.atol)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_float64_and_int_inputs_are_cast_to_float32(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    spec = zoo[f"{fmt}-mlp"]
    with load_model(spec.path) as runner:
        x64 = spec.random_inputs(2)["input"].astype(np.float64)
        got = runner.predict(x64)
        assert_close(got, spec.reference({"input": x64.astype(np.float32)}), spec.atol)
        ints = np.ones((2, 16), dtype=np.int32)
        got_int = runner.predict({"input": ints})
        assert_close(got_int, spec.reference({"input": ints.astype(np.float32)}), spec.atol)


def test_int_input_model_takes_fitting_integers(zoo: dict[str, ModelSpec]) -> None:
    spec = zoo["onnx-int-input"]
    with load_model(spec.path) as runner:
        ids = spec.random_inputs(3)["token_ids"]
        want = spec.reference({"token_ids": ids})
        assert_close(runner.predict(ids.astype(np.int32)), want, spec.atol)
        assert_close(runner.predict(ids.astype(np.uint8)), want, spec.atol)


def test_int32_input_model_accepts_int64_values_that_fit(tmp_path: Path) -> None:
    spec = onnx_models.int_input_model(tmp_path / "ids32.onnx", index_dtype=np.int32)
    with load_model(spec.path) as runner:
        ids = spec.random_inputs(2)["token_ids"]
        got = runner.predict(ids.astype(np.int64))
        assert_close(got, spec.reference({"token_ids": ids}), spec.atol)


@pytest.mark.parametrize("key", ["onnx-mlp", "tflite-mlp", "tflite-mlp-int8"])
def test_non_finite_allowed_when_configured(key: str, zoo: dict[str, ModelSpec]) -> None:
    spec = zoo[key]
    x = spec.random_float_inputs(2)["input"]
    x[0, 0] = np.nan
    x[1, 1] = np.inf
    with load_model(spec.path, RunnerOptions(reject_non_finite=False)) as runner:
        out = runner.predict(x)[spec.output_names[0]]
        assert out.shape == (2, 4)
        if spec.inputs[0].quant is not None:
            assert np.isfinite(out).all()  # NaN quantizes to the zero point, inf saturates


def test_several_models_side_by_side(zoo: dict[str, ModelSpec]) -> None:
    keys = [k for k in zoo if k != "tflite-per-channel"]
    runners: dict[str, ModelRunner] = {k: load_model(zoo[k].path) for k in keys}
    try:
        for _ in range(2):
            for key, runner in runners.items():
                spec = zoo[key]
                inputs = spec.random_inputs(2, seed=len(key))
                assert_close(runner.predict(inputs, raw=True), spec.reference(inputs), spec.atol)
    finally:
        for runner in runners.values():
            runner.close()


@pytest.mark.parametrize("key", ["onnx-cnn-nchw", "tflite-cnn-nhwc", "tflite-cnn-nhwc-int8"])
def test_thread_options_give_the_same_results(key: str, zoo: dict[str, ModelSpec]) -> None:
    spec = zoo[key]
    inputs = spec.random_inputs(4)
    results = []
    for options in (RunnerOptions(), RunnerOptions(intra_op_threads=1),
                    RunnerOptions(intra_op_threads=2, inter_op_threads=2)):
        with load_model(spec.path, options) as runner:
            assert runner.options == options
            results.append(runner.predict(inputs, raw=True))
    for other in results[1:]:
        assert_close(other, results[0], spec.atol)


def test_invalid_thread_options_are_refused() -> None:
    with pytest.raises(ValueError, match="intra_op_threads"):
        RunnerOptions(intra_op_threads=0)
    with pytest.raises(ValueError, match="inter_op_threads"):
        RunnerOptions(inter_op_threads=True)
