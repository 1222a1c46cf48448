"""Trainable numpy models: training quality, ONNX export/import, weight write-back.

Real data (scikit-learn's bundled digits), real onnxruntime, the agent's own runtime and
the project's quantizer; no mocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.agent.runtime import load_model
from edgefleet.federated.models import (
    MLP,
    DataError,
    Family,
    LogisticRegression,
    ModelError,
    OnnxFormatError,
    TrainableModel,
    WeightsError,
    create,
    from_onnx,
    to_onnx,
    write_weights_into,
)
from edgefleet.tools.modelgen.digits import DigitsSplit, load_digits_split
from edgefleet.tools.quantize import QuantizeOptions, quantize_model

# Plain SGD settings that reach > 90% held-out accuracy on digits in well under a second.
SCHEDULE = {"logreg": {"epochs": 5, "lr": 0.5}, "mlp": {"epochs": 15, "lr": 0.1}}
FAMILIES = ("logreg", "mlp")


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return load_digits_split(0)


@pytest.fixture(scope="module")
def trained(split: DigitsSplit) -> dict[str, TrainableModel]:
    """One trained model per family. Tests must not train these further: clone first."""
    models = {}
    for family in FAMILIES:
        model = create(family, 64, 10, seed=0)
        model.fit(split.x_train, split.y_train, **SCHEDULE[family])
        models[family] = model
    return models


def clone(model: TrainableModel) -> TrainableModel:
    copy = from_onnx(to_onnx(model))
    assert copy.weights().keys() == model.weights().keys()
    return copy


def accuracy_of(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == y))


def ort_run(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x}), strict=True))


# -- training ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_training_reaches_high_held_out_accuracy(
    trained: dict[str, TrainableModel], split: DigitsSplit, family: str
) -> None:
    model = trained[family]
    result = model.evaluate(split.x_eval, split.y_eval)
    assert result.n == len(split.y_eval)
    assert result.accuracy > 0.9, result
    assert 0 < result.loss < 0.5
    untrained = create(family, 64, 10, seed=0).evaluate(split.x_eval, split.y_eval)
    assert result.loss < untrained.loss / 3


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_reports_training_metrics(split: DigitsSplit, family: str) -> None:
    model = create(family, 64, 10, seed=3)
    result = model.fit(split.x_train, split.y_train, epochs=2, lr=0.1, batch_size=64)
    assert result.n == len(split.y_train) and result.epochs == 2
    again = model.evaluate(split.x_train, split.y_train)
    assert result.loss == pytest.approx(again.loss) and result.accuracy == again.accuracy


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(split: DigitsSplit, family: str) -> None:
    runs = []
    for _ in range(2):
        model = create(family, 64, 10, seed=7)
        model.fit(split.x_train[:300], split.y_train[:300], epochs=2, lr=0.1)
        runs.append(model.weights())
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name])
    other = create(family, 64, 10, seed=8)
    other.fit(split.x_train[:300], split.y_train[:300], epochs=2, lr=0.1)
    assert any(not np.array_equal(runs[0][k], v) for k, v in other.weights().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_one_full_batch_step_follows_the_numerical_gradient(family: str) -> None:
    """With one batch of all samples and lr=1, a step moves by exactly -(grad + l2*W)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=12)
    model = create(family, 5, 3, hidden=4, seed=2)
    model.set_weights({k: (v + rng.normal(scale=0.3, size=v.shape)).astype(np.float32)
                       for k, v in model.weights().items()})
    start = model.weights()
    l2, eps = 0.1, 1e-2
    numeric = {}
    probe = create(family, 5, 3, hidden=4)
    for name, value in start.items():
        grad = np.zeros(value.shape)
        for i in np.ndindex(value.shape):
            losses = []
            for sign in (1, -1):
                w = {k: v.copy() for k, v in start.items()}
                w[name][i] += sign * eps
                probe.set_weights(w)
                losses.append(probe.evaluate(x, y).loss)
            grad[i] = (losses[0] - losses[1]) / (2 * eps)
        numeric[name] = grad + (l2 * value if name.endswith(".weight") else 0.0)
    model.fit(x, y, epochs=1, lr=1.0, batch_size=len(x), l2=l2)
    for name, value in model.weights().items():
        np.testing.assert_allclose(start[name] - value, numeric[name], atol=2e-3, err_msg=name)


def test_weights_are_float32_copies_keyed_by_initializer_names() -> None:
    logreg, mlp = create("logreg", 5, 3), create("mlp", 5, 3, hidden=4)
    assert isinstance(logreg, LogisticRegression) and logreg.family == Family.LOGREG == "logreg"
    assert isinstance(mlp, MLP) and mlp.family == "mlp"
    assert {k: v.shape for k, v in logreg.weights().items()} == {
        "linear.weight": (5, 3), "linear.bias": (3,)}
    assert {k: v.shape for k, v in mlp.weights().items()} == {
        "hidden.weight": (5, 4), "hidden.bias": (4,), "output.weight": (4, 3),
        "output.bias": (3,)}
    w = mlp.weights()
    assert all(v.dtype == np.float32 for v in w.values())
    w["hidden.weight"][:] = 99.0
    assert not np.any(mlp.weights()["hidden.weight"] == 99.0)


def test_fedprox_term_pulls_weights_towards_the_global_model(split: DigitsSplit) -> None:
    global_model = create("mlp", 64, 10, seed=0)
    global_model.fit(split.x_train, split.y_train, epochs=2, lr=0.1)
    anchor = global_model.weights()
    # A skewed local data set (only digits 0-4) pulls a free model far from the anchor.
    local = split.y_train < 5
    x, y = split.x_train[local], split.y_train[local]

    def distance_after(mu: float, global_weights: dict[str, np.ndarray] | None) -> float:
        model = create("mlp", 64, 10, seed=0)
        model.set_weights(anchor)
        model.fit(x, y, epochs=5, lr=0.1, proximal_mu=mu, global_weights=global_weights,
                  rng=np.random.default_rng(1))
        w = model.weights()
        return float(np.sqrt(sum(np.sum((w[k] - anchor[k]) ** 2) for k in w)))

    free = distance_after(0.0, anchor)
    prox = distance_after(5.0, anchor)
    assert prox < free / 2, (prox, free)
    # Without explicit global weights the anchor is where fit() started: same result.
    assert distance_after(5.0, None) == pytest.approx(prox)
    # mu = 0 ignores global_weights entirely.
    assert distance_after(0.0, None) == pytest.approx(free)


def test_l2_shrinks_the_weight_matrices(split: DigitsSplit) -> None:
    norms = []
    for l2 in (0.0, 0.05):
        model = create("logreg", 64, 10, seed=0)
        model.fit(split.x_train, split.y_train, epochs=3, lr=0.5, l2=l2)
        norms.append(float(np.linalg.norm(model.weights()["linear.weight"])))
    assert norms[1] < 0.8 * norms[0]


def test_fedavg_of_models_trained_on_disjoint_halves(split: DigitsSplit) -> None:
    half = len(split.x_train) // 2
    parts = [(split.x_train[:half], split.y_train[:half]),
             (split.x_train[half:], split.y_train[half:])]
    global_model = create("mlp", 64, 10, seed=0)
    start = global_model.weights()
    for _round in range(3):
        updates = []
        for i, (x, y) in enumerate(parts):
            client = create("mlp", 64, 10, seed=100 + i)
            client.set_weights(start)
            result = client.fit(x, y, epochs=5, lr=0.1)
            updates.append((client.weights(), result.n))
        total = sum(n for _, n in updates)
        start = {k: (sum(w[k] * n for w, n in updates) / total).astype(np.float32)
                 for k in start}
    global_model.set_weights(start)
    acc = global_model.evaluate(split.x_eval, split.y_eval).accuracy
    assert acc > 0.9, acc
    out = ort_run(to_onnx(global_model), split.x_eval)
    assert accuracy_of(out["probabilities"], split.y_eval) == pytest.approx(acc)


# -- ONNX --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_export_runs_in_onnxruntime_and_the_agent_runtime(
    trained: dict[str, TrainableModel], split: DigitsSplit, tmp_path: Path, family: str
) -> None:
    model = trained[family]
    data = to_onnx(model)
    expected = model.predict_proba(split.x_eval)
    assert expected.dtype == np.float32 and expected.shape == (len(split.x_eval), 10)

    out = ort_run(data, split.x_eval)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5, rtol=1e-5)
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"], expected.argmax(axis=1))

    path = tmp_path / f"{family}.onnx"
    path.write_bytes(data)
    with load_model(path) as runner:
        assert runner.signature.input_names == ("input",)
        assert runner.signature.output_names == ("label", "probabilities")
        got = runner.predict(split.x_eval)
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(got["label"], expected.argmax(axis=1))

    proto = onnx.load_from_string(data)
    assert {t.name for t in proto.graph.initializer} == set(model.weights())
    assert {p.key: p.value for p in proto.metadata_props}["edgefleet.family"] == family
    assert {n.op_type for n in proto.graph.node} <= {"MatMul", "Add", "Relu", "Softmax",
                                                       "ArgMax"}


def test_export_honours_input_name_and_opset(trained: dict[str, TrainableModel],
                                             split: DigitsSplit) -> None:
    data = to_onnx(trained["logreg"], input_name="pixels", opset=13)
    proto = onnx.load_from_string(data)
    assert proto.graph.input[0].name == "pixels" and proto.opset_import[0].version == 13
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"pixels": split.x_eval})[0]
    np.testing.assert_allclose(probs, trained["logreg"].predict_proba(split.x_eval), atol=1e-5)
    with pytest.raises(OnnxFormatError, match="opset"):
        to_onnx(trained["logreg"], opset=9)
    with pytest.raises(OnnxFormatError, match="input name"):
        to_onnx(trained["logreg"], input_name="linear.weight")


@pytest.mark.parametrize("family", FAMILIES)
def test_from_onnx_round_trip(trained: dict[str, TrainableModel], split: DigitsSplit,
                              family: str) -> None:
    model = trained[family]
    back = from_onnx(to_onnx(model))
    assert type(back) is type(model) and back.family == family
    assert (back.n_features, back.n_classes) == (64, 10)
    original = model.weights()
    for name, value in back.weights().items():
        np.testing.assert_array_equal(value, original[name])
    np.testing.assert_array_equal(back.predict_proba(split.x_eval),
                                  model.predict_proba(split.x_eval))


def test_from_onnx_refuses_foreign_graphs(trained: dict[str, TrainableModel]) -> None:
    with pytest.raises(OnnxFormatError, match="not an ONNX model"):
        from_onnx(b"definitely not protobuf \xff\xff")
    proto = onnx.load_from_string(to_onnx(trained["logreg"]))
    del proto.metadata_props[:]
    with pytest.raises(OnnxFormatError, match=r"edgefleet\.family"):
        from_onnx(proto.SerializeToString())
    proto = onnx.load_from_string(to_onnx(trained["logreg"]))
    proto.metadata_props[0].value = "mlp"  # claims a family its initializers do not match
    with pytest.raises(OnnxFormatError, match="initializers"):
        from_onnx(proto.SerializeToString())


@pytest.mark.parametrize("family", FAMILIES)
def test_write_weights_into_the_deployed_graph(
    trained: dict[str, TrainableModel], split: DigitsSplit, family: str
) -> None:
    deployed = to_onnx(create(family, 64, 10, seed=5))  # the untrained version on devices
    new_weights = trained[family].weights()
    updated = write_weights_into(deployed, new_weights)

    out = ort_run(updated, split.x_eval)
    np.testing.assert_allclose(out["probabilities"],
                               trained[family].predict_proba(split.x_eval), atol=1e-5)
    assert accuracy_of(out["probabilities"], split.y_eval) > 0.9

    before, after = onnx.load_from_string(deployed), onnx.load_from_string(updated)
    assert before.graph.node == after.graph.node
    assert before.graph.input == after.graph.input and before.graph.output == after.graph.output
    assert before.metadata_props == after.metadata_props
    assert [t.name for t in before.graph.initializer] == [t.name for t in after.graph.initializer]
    for t in after.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), new_weights[t.name])


def test_write_weights_into_allows_a_partial_update(trained: dict[str, TrainableModel]) -> None:
    base = create("mlp", 64, 10, seed=5)
    deployed = to_onnx(base)
    new_bias = np.full(10, 0.25, dtype=np.float32)
    updated = from_onnx(write_weights_into(deployed, {"output.bias": new_bias})).weights()
    np.testing.assert_array_equal(updated["output.bias"], new_bias)
    np.testing.assert_array_equal(updated["hidden.weight"], base.weights()["hidden.weight"])


def test_write_weights_into_works_on_foreign_graphs(tmp_path: Path) -> None:
    """Any float32 initializer can be replaced, not only graphs from to_onnx."""
    from edgefleet.tools.modelgen import onnx_models

    spec = onnx_models.mlp(tmp_path / "foreign.onnx", sizes=(4, 3))
    proto = onnx.load(str(spec.path))
    names = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    zeros = {k: np.zeros_like(v) for k, v in names.items()}
    out = ort_run_named(write_weights_into(spec.path.read_bytes(), zeros),
                        np.ones((2, 4), dtype=np.float32))
    np.testing.assert_allclose(out, 1 / 3, atol=1e-6)


def ort_run_named(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {session.get_inputs()[0].name: x})[0]
    return result


# -- refusals ----------------------------------------------------------------------------


def bad_weight_cases(w: dict[str, np.ndarray]) -> list[tuple[dict[str, Any], str]]:
    nan = dict(w, **{"hidden.bias": w["hidden.bias"].copy()})
    nan["hidden.bias"][3] = np.nan
    inf = dict(w, **{"output.weight": w["output.weight"].copy()})
    inf["output.weight"][0, 0] = np.inf
    return [
        ({**w, "extra.weight": w["hidden.bias"]}, r"unknown weight 'extra\.weight'"),
        ({k: v for k, v in w.items() if k != "output.bias"}, r"missing weight 'output\.bias'"),
        ({**w, "hidden.weight": w["hidden.weight"][:, :5]}, r"'hidden\.weight' has shape"),
        ({**w, "output.bias": w["output.bias"].astype(np.float64)},
         r"'output\.bias' has dtype float64"),
        ({**w, "hidden.bias": list(w["hidden.bias"])}, r"'hidden\.bias' is a list"),
        (nan, r"'hidden\.bias' has 1 NaN/inf"),
        (inf, r"'output\.weight' has 1 NaN/inf"),
    ]


def test_set_weights_refuses_bad_weights_and_keeps_the_old_ones() -> None:
    model = create("mlp", 64, 10, hidden=8, seed=1)
    good = model.weights()
    for bad, message in bad_weight_cases(good):
        with pytest.raises(WeightsError, match=message) as info:
            model.set_weights(bad)
        assert isinstance(info.value, ValueError) and isinstance(info.value, ModelError)
    for name, value in model.weights().items():
        np.testing.assert_array_equal(value, good[name])


def test_write_weights_into_refuses_bad_weights() -> None:
    deployed = to_onnx(create("mlp", 64, 10, hidden=8, seed=1))
    for bad, message in bad_weight_cases(create("mlp", 64, 10, hidden=8).weights()):
        if "missing" in message:
            continue  # partial updates are allowed here
        expected = r"no initializer 'extra\.weight'" if "unknown" in message else message
        with pytest.raises(WeightsError, match=expected):
            write_weights_into(deployed, bad)
    with pytest.raises(WeightsError, match="no weights"):
        write_weights_into(deployed, {})
    with pytest.raises(OnnxFormatError):
        write_weights_into(b"\x00garbage", {"hidden.bias": np.zeros(8, np.float32)})


def test_fit_refuses_bad_data_and_options(split: DigitsSplit) -> None:
    model = create("logreg", 64, 10)
    x, y = split.x_train[:50], split.y_train[:50]
    cases: list[tuple[dict[str, object], str]] = [
        ({"x": x[:, :10]}, r"shape \(N, 64\)"),
        ({"x": np.where(x > 0.5, np.nan, x)}, "NaN"),
        ({"y": y[:-1]}, r"shape \(50,\)"),
        ({"y": y.astype(np.float32)}, "integer"),
        ({"y": np.full(50, 10)}, r"\[0, 10\)"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"proximal_mu": -0.1}, "proximal_mu"),
        ({"proximal_mu": 1.0, "global_weights": {"linear.bias": np.zeros(10, np.float32)}},
         r"missing weight 'linear\.weight'"),
    ]
    for change, message in cases:
        args: dict[str, object] = {"x": x, "y": y, "epochs": 1, "lr": 0.1, **change}
        with pytest.raises(ValueError, match=message):
            model.fit(**args)


def test_divergent_training_is_refused_without_touching_the_model(split: DigitsSplit) -> None:
    model = create("mlp", 64, 10)
    before = model.weights()
    with pytest.raises(DataError, match="diverged"):
        model.fit(split.x_train * 1e6, split.y_train, epochs=2, lr=1e6)
    for name, value in model.weights().items():
        np.testing.assert_array_equal(value, before[name])


def test_create_refuses_unknown_family_and_sizes() -> None:
    with pytest.raises(ValueError, match=r"unknown model family 'cnn'.*'logreg', 'mlp'"):
        create("cnn", 64, 10)
    with pytest.raises(ValueError, match="n_classes"):
        create("logreg", 64, 1)
    with pytest.raises(ValueError, match="hidden"):
        create("mlp", 64, 10, hidden=0)


def test_softmax_is_stable_for_huge_logits() -> None:
    model = create("logreg", 2, 3)
    model.set_weights({"linear.weight": np.array([[1e30, -1e30, 0], [0, 0, 0]], np.float32),
                       "linear.bias": np.zeros(3, np.float32)})
    x = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    probs = model.predict_proba(x)
    np.testing.assert_allclose(probs, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    assert np.isfinite(model.evaluate(x, np.array([0, 1])).loss)
    assert np.isfinite(model.evaluate(x, np.array([2, 2])).loss)


# -- quantization --------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_export_keeps_its_accuracy(
    trained: dict[str, TrainableModel], split: DigitsSplit, tmp_path: Path, family: str
) -> None:
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    src.write_bytes(to_onnx(trained[family]))
    report = quantize_model(src, dst, QuantizeOptions(max_accuracy_drop=2.0),
                            eval_x=split.x_eval, eval_y=split.y_eval)
    assert report.written and report.quantized_size_bytes < report.float_size_bytes
    assert report.accuracy_change_points is not None
    assert report.accuracy_change_points >= -2.0
    float_acc = trained[family].evaluate(split.x_eval, split.y_eval).accuracy
    with load_model(dst) as runner:
        probs = runner.predict(split.x_eval)["probabilities"]
    assert abs(accuracy_of(probs, split.y_eval) - float_acc) * 100 <= 2.0
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, ops
