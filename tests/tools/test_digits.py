"""The digits builders train real classifiers and export them faithfully."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.agent.runtime import load_model
from edgefleet.tools.modelgen import onnx_models
from edgefleet.tools.modelgen.digits import DigitsArtifacts, load_digits_split, train_digits_mlp


def test_artifacts_are_written_with_useful_accuracy(digits: DigitsArtifacts) -> None:
    for path in (digits.float_model, digits.logreg_model, digits.eval_x, digits.eval_y,
                 digits.calibration):
        assert path.is_file(), path
    x, y, calib = np.load(digits.eval_x), np.load(digits.eval_y), np.load(digits.calibration)
    assert x.dtype == np.float32 and x.shape[1] == 64 and x.min() >= 0.0 and x.max() <= 1.0
    assert y.dtype == np.int64 and y.shape == (x.shape[0],)
    assert calib.dtype == np.float32 and calib.shape[1] == 64
    assert digits.mlp_accuracy > 0.9
    assert digits.logreg_accuracy > 0.9


def test_onnx_models_reproduce_sklearn_accuracy(digits: DigitsArtifacts) -> None:
    x, y = np.load(digits.eval_x), np.load(digits.eval_y)
    for path, expected in ((digits.float_model, digits.mlp_accuracy),
                           (digits.logreg_model, digits.logreg_accuracy)):
        with load_model(path) as runner:
            assert runner.signature.output_names == ("label", "probabilities")
            out = runner.predict(x)
        probs = out["probabilities"]
        assert probs.shape == (len(x), 10)  # a plain tensor, not a ZipMap
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert np.mean(probs.argmax(axis=1) == y) == expected
        np.testing.assert_array_equal(out["label"], probs.argmax(axis=1))


def test_calibration_data_comes_from_the_training_part() -> None:
    split = load_digits_split(0)
    train_rows = {row.tobytes() for row in split.x_train}
    assert all(row.tobytes() in train_rows for row in split.x_calib)
    assert len(split.x_train) + len(split.x_eval) == 1797


def test_trained_weights_rebuild_the_same_classifier(tmp_path: Path) -> None:
    layers, split = train_digits_mlp(seed=0, hidden=(32,))
    spec = onnx_models.mlp(tmp_path / "digits.onnx", weights=layers)
    with load_model(spec.path) as runner:
        probs = runner.predict(split.x_eval)["probabilities"]
    np.testing.assert_allclose(probs, spec.reference({"input": split.x_eval})["probabilities"],
                               atol=spec.atol)
    assert np.mean(probs.argmax(axis=1) == split.y_eval) > 0.9
