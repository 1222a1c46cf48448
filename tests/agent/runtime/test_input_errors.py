"""Bad input gets a typed error naming the tensor, what was expected and what came."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from edgefleet.agent.runtime import RunnerOptions, load_model
from edgefleet.agent.runtime.errors import (
    EmptyBatchError,
    InferenceError,
    InputDtypeError,
    InputError,
    InputShapeError,
    MissingInputError,
    NonFiniteInputError,
    RuntimeFault,
    UnknownInputError,
)
from edgefleet.tools.modelgen import onnx_models
from edgefleet.tools.modelgen.spec import ModelSpec

BOTH = ["onnx", "tflite"]


def x16(batch: int = 2, dtype: type = np.float32) -> np.ndarray:
    return np.zeros((batch, 16), dtype=dtype)


@pytest.mark.parametrize("fmt", BOTH)
def test_wrong_rank(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with (
        load_model(zoo[f"{fmt}-mlp"].path) as runner,
        pytest.raises(InputShapeError, match=r"input 'input': expected rank 2 .*got rank 1") as e,
    ):
        runner.predict(np.zeros(16, dtype=np.float32))
    assert e.value.tensor == "input"
    assert "rank 2" in e.value.expected and "(16,)" in e.value.got
    assert isinstance(e.value, InputError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("fmt", BOTH)
def test_wrong_feature_size(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with (
        load_model(zoo[f"{fmt}-mlp"].path) as runner,
        pytest.raises(InputShapeError, match="dimension 1 must be 16") as e,
    ):
        runner.predict({"input": np.zeros((2, 15), dtype=np.float32)})
    assert e.value.got == "shape (2, 15)"
    assert "16" in e.value.expected


@pytest.mark.parametrize("fmt", BOTH)
def test_image_in_the_wrong_layout(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with load_model(zoo[f"{fmt}-cnn-nhwc"].path) as runner:
        nchw = np.zeros((1, 3, 6, 6), dtype=np.float32)
        with pytest.raises(InputShapeError, match=r"input 'image'.*dimension 1 must be 6"):
            runner.predict(nchw)


@pytest.mark.parametrize("fmt", BOTH)
def test_static_batch_refuses_other_batch_sizes(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with load_model(zoo[f"{fmt}-mlp-static"].path) as runner:
        runner.predict(x16(1))
        with pytest.raises(InputShapeError, match="dimension 0 must be 1"):
            runner.predict(x16(3))


@pytest.mark.parametrize("fmt", BOTH)
def test_strings_are_refused(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with (
        load_model(zoo[f"{fmt}-mlp"].path) as runner,
        pytest.raises(InputDtypeError, match="input 'input': expected dtype float32") as e,
    ):
        runner.predict(np.full((1, 16), "a"))
    assert "<U1" in e.value.got


@pytest.mark.parametrize("fmt", BOTH)
def test_complex_values_are_refused(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with (
        load_model(zoo[f"{fmt}-mlp"].path) as runner,
        pytest.raises(InputDtypeError, match="complex128"),
    ):
        runner.predict(np.zeros((1, 16), dtype=np.complex128))


@pytest.mark.parametrize("fmt", BOTH)
def test_ragged_lists_are_refused(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with (
        load_model(zoo[f"{fmt}-mlp"].path) as runner,
        pytest.raises(InputError, match="input 'input'"),
    ):
        runner.predict([[0.0] * 16, [0.0] * 3])


def test_floats_into_an_integer_input(zoo: dict[str, ModelSpec]) -> None:
    with (
        load_model(zoo["onnx-int-input"].path) as runner,
        pytest.raises(InputDtypeError, match="expected dtype int64, got dtype float32") as e,
    ):
        runner.predict(np.zeros((1, 6), dtype=np.float32))
    assert e.value.tensor == "token_ids"


def test_integers_that_do_not_fit(tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = onnx_models.int_input_model(tmp_path_factory.mktemp("i32") / "m.onnx",
                                       index_dtype=np.int32)
    with (
        load_model(spec.path) as runner,
        pytest.raises(InputDtypeError, match="expected dtype int32, got dtype int64"),
    ):
        runner.predict(np.full((1, 6), 2**40, dtype=np.int64))


@pytest.mark.parametrize("key", ["tflite-mlp-int8", "tflite-mlp-uint8", "onnx-int8-io"])
def test_raw_quantized_input_needs_the_exact_integer_dtype(
    key: str, zoo: dict[str, ModelSpec]
) -> None:
    spec = zoo[key]
    with (
        load_model(spec.path) as runner,
        pytest.raises(InputDtypeError, match="raw quantized input") as e,
    ):
        runner.predict(x16(), raw=True)
        assert e.value.got == "dtype float32"
        with pytest.raises(InputDtypeError, match="real numbers"):
            runner.predict(np.full((1, 16), "x"))


def test_multi_input_missing_and_unknown(zoo: dict[str, ModelSpec]) -> None:
    for fmt in BOTH:
        with load_model(zoo[f"{fmt}-multi"].path) as runner:
            features = np.zeros((1, 8), dtype=np.float32)
            bias = np.zeros((1, 4), dtype=np.float32)
            with pytest.raises(MissingInputError, match="input 'bias'") as e:
                runner.predict({"features": features})
            assert e.value.tensor == "bias" and "features" in e.value.got
            with pytest.raises(UnknownInputError, match="input 'extra'") as u:
                runner.predict({"features": features, "bias": bias, "extra": bias})
            assert "'features'" in u.value.expected and "'bias'" in u.value.expected
            with pytest.raises(UnknownInputError, match="input 'bais'"):
                runner.predict({"features": features, "bais": bias})
            with pytest.raises(MissingInputError, match="mapping of the 2 inputs"):
                runner.predict(features)


@pytest.mark.parametrize("fmt", BOTH)
def test_unknown_name_on_single_input_model(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with (
        load_model(zoo[f"{fmt}-mlp"].path) as runner,
        pytest.raises(UnknownInputError, match="expected one of \\['input'\\], got 'x'"),
    ):
        runner.predict({"x": x16()})


@pytest.mark.parametrize("key", ["onnx-mlp", "tflite-mlp", "tflite-mlp-int8", "onnx-uint8-io"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_refused_by_default(key: str, bad: float, zoo: dict[str, ModelSpec]) -> None:
    with load_model(zoo[key].path) as runner:
        x = x16(3)
        x[2, 5] = bad
        with pytest.raises(NonFiniteInputError, match="1 NaN/inf value") as e:
            runner.predict(x)
    assert e.value.tensor == "input"
    assert "reject_non_finite=False" in str(e.value)


def test_non_finite_check_can_be_disabled(zoo: dict[str, ModelSpec]) -> None:
    with load_model(zoo["tflite-mlp-logits"].path, RunnerOptions(reject_non_finite=False)) as r:
        x = x16(1)
        x[0, 0] = np.nan
        assert np.isnan(r.predict(x)["logits"]).any()


@pytest.mark.parametrize("key", ["onnx-mlp", "tflite-mlp", "tflite-mlp-int8", "onnx-multi"])
def test_empty_batch(key: str, zoo: dict[str, ModelSpec]) -> None:
    spec = zoo[key]
    inputs = {t.name: np.zeros((0, *t.shape[1:]), dtype=np.float32) for t in spec.inputs}
    with (
        load_model(spec.path) as runner,
        pytest.raises(EmptyBatchError, match="expected at least one sample") as e,
    ):
        runner.predict(inputs)
    assert e.value.tensor == spec.input_names[0]
    assert "(0," in e.value.got


@pytest.mark.parametrize("fmt", BOTH)
def test_zero_sized_feature_dimension_is_a_shape_error(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    with (
        load_model(zoo[f"{fmt}-mlp"].path) as runner,
        pytest.raises(InputShapeError, match="zero-sized"),
    ):
        runner.predict(np.zeros((2, 0), dtype=np.float32))


@pytest.mark.parametrize("fmt", BOTH)
def test_runner_after_close(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    runner = load_model(zoo[f"{fmt}-mlp"].path)
    runner.predict(x16())
    runner.close()
    with pytest.raises(InferenceError, match="closed") as e:
        runner.predict(x16())
    assert e.value.path == zoo[f"{fmt}-mlp"].path
    runner.close()  # closing twice is harmless
    with load_model(zoo[f"{fmt}-mlp"].path) as fresh:
        fresh.predict(x16())
    with pytest.raises(InferenceError):
        fresh.predict(x16())


def test_errors_share_a_base_and_pickle() -> None:
    err = InputShapeError("x", "rank 2", "rank 1", "detail")
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, RuntimeFault)
    assert (again.tensor, again.expected, again.got, str(again)) == (
        "x", "rank 2", "rank 1", str(err))


def test_input_errors_leave_the_runner_usable(zoo: dict[str, ModelSpec]) -> None:
    spec = zoo["tflite-mlp"]
    with load_model(spec.path) as runner:
        good = spec.random_inputs(2)
        for bad in (np.zeros(16), np.zeros((2, 3)), np.full((1, 16), np.nan)):
            with pytest.raises(InputError):
                runner.predict(bad)
        got = runner.predict(good)["probabilities"]
        np.testing.assert_allclose(got, spec.reference(good)["probabilities"], atol=spec.atol)


@pytest.mark.parametrize("key", ["onnx-mlp-logits", "tflite-mlp-logits"])
def test_huge_finite_values_are_not_mistaken_for_inf(key: str, zoo: dict[str, ModelSpec]) -> None:
    with load_model(zoo[key].path) as runner:
        x = np.full((64, 16), 3.0e38, dtype=np.float32)
        x[::2] = -3.0e38
        runner.predict(x)  # accepted: every value is finite
        runner.predict(x.astype(np.float64))


# The fast finite check computes inf - inf here, so numpy warns once: the input is
# still refused with the typed error, which is what this test is about.
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
@pytest.mark.parametrize("fmt", BOTH)
def test_both_infinities_in_one_input(fmt: str, zoo: dict[str, ModelSpec]) -> None:
    x = x16(2)
    x[0, 0], x[1, 3] = np.inf, -np.inf
    with (
        load_model(zoo[f"{fmt}-mlp"].path) as runner,
        pytest.raises(NonFiniteInputError, match="2 NaN/inf value"),
    ):
        runner.predict(x)
