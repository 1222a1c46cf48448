"""Real classifiers trained on scikit-learn's bundled digits data set (no download).

The digits set (1,797 8x8 grey images, 10 classes) ships inside scikit-learn, so tests,
benchmarks and the demo get a model with a meaningful accuracy without network access.

* :func:`load_digits_split`: the data as float32 in [0, 1] (pixels / 16), split into
  train / calibration / evaluation parts with a fixed seed.
* :func:`train_digits_mlp`: a trained ``MLPClassifier``'s weights as numpy ``(W, b)``
  layers, so other builders (``onnx_models.mlp``, ``tflite_models.mlp``) can write the
  same trained network in their own format.
* :func:`build_digits_models`: trains a ``LogisticRegression`` and an ``MLPClassifier``,
  exports both with skl2onnx (plain float ``probabilities`` tensor, no ZipMap) and saves
  the evaluation / calibration arrays as ``.npy``; returns a :class:`DigitsArtifacts`.

scikit-learn and skl2onnx are development dependencies ([dev]); they are imported inside
the functions so importing this module costs nothing on a device.
"""


from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tools.modelgen.layers import Dense

log = logging.getLogger(__name__)

NUM_FEATURES = 64
NUM_CLASSES = 10
INPUT_NAME = "input"
TARGET_OPSET = 17


@dataclass(frozen=True)
class DigitsSplit:
    """The digits data as float32 features in [0, 1] and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


@dataclass(frozen=True)
class DigitsArtifacts:
    """Files written by :func:`build_digits_models`.

    Attributes:
        float_model: the MLP classifier as ONNX (the model to quantize and serve).
        logreg_model: the logistic-regression classifier as ONNX.
        eval_x, eval_y: held-out features (float32 [N, 64]) and labels (int64 [N]).
        calibration: float32 [M, 64] samples for static quantization (from the
            training part, never the evaluation part).
        mlp_accuracy, logreg_accuracy: accuracy on the held-out part, in [0, 1].
    """

    float_model: Path
    logreg_model: Path
    eval_x: Path
    eval_y: Path
    calibration: Path
    mlp_accuracy: float
    logreg_accuracy: float


def load_digits_split(seed: int = 0, *, eval_fraction: float = 0.25,
                      calibration_size: int = 200) -> DigitsSplit:
    """Load the bundled digits set and split it reproducibly."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (np.asarray(data.data, dtype=np.float32) / 16.0).astype(np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=eval_fraction, random_state=seed, stratify=y
    )
    rng = np.random.default_rng(seed)
    calib_idx = rng.choice(len(x_train), size=min(calibration_size, len(x_train)), replace=False)
    return DigitsSplit(
        x_train=x_train,
        y_train=y_train,
        x_calib=np.ascontiguousarray(x_train[calib_idx]),
        x_eval=np.ascontiguousarray(x_eval),
        y_eval=np.ascontiguousarray(y_eval),
    )


def _fit_mlp(split: DigitsSplit, hidden: tuple[int, ...], seed: int) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=400, random_state=seed)
    # One BLAS thread: the matrices are tiny, and on a small busy machine extra BLAS
    # threads only spin against each other (several times slower in a loaded CI).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # A few hundred epochs give ~97% held-out accuracy, which is all we need; the
        # optimizer's "not converged" warning would only be noise in tests and the demo.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(split.x_train, split.y_train)
    return clf


def train_digits_mlp(
    seed: int = 0, hidden: tuple[int, ...] = (64,)
) -> tuple[list[Dense], DigitsSplit]:
    """Train an MLP on digits; return its layers (W [in, out], b [out]) and the data.

    The network is ReLU between layers and logits out (apply softmax for probabilities),
    which is exactly what ``onnx_models.mlp`` / ``tflite_models.mlp`` build.
    """
    split = load_digits_split(seed)
    clf = _fit_mlp(split, hidden, seed)
    layers = [
        (np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32))
        for w, b in zip(clf.coefs_, clf.intercepts_, strict=True)
    ]
    return layers, split


def _to_onnx(clf: Any, path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        clf,
        initial_types=[(INPUT_NAME, FloatTensorType([None, NUM_FEATURES]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": TARGET_OPSET, "ai.onnx.ml": 3},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())


def build_digits_models(out_dir: Path, seed: int = 0,
                        hidden: tuple[int, ...] = (64,)) -> DigitsArtifacts:
    """Train digits classifiers, export them to ONNX and save the data they need.

    Writes ``digits_mlp.onnx``, ``digits_logreg.onnx``, ``digits_eval_x.npy``,
    ``digits_eval_y.npy`` and ``digits_calibration.npy`` into ``out_dir``. Each ONNX
    model takes ``input`` float32 [N, 64] (pixels / 16) and returns ``label`` int64 [N]
    and ``probabilities`` float32 [N, 10].
    """
    from sklearn.linear_model import LogisticRegression

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = load_digits_split(seed)
    mlp = _fit_mlp(split, hidden, seed)
    logreg = LogisticRegression(max_iter=1000)
    logreg.fit(split.x_train, split.y_train)
    artifacts = DigitsArtifacts(
        float_model=out_dir / "digits_mlp.onnx",
        logreg_model=out_dir / "digits_logreg.onnx",
        eval_x=out_dir / "digits_eval_x.npy",
        eval_y=out_dir / "digits_eval_y.npy",
        calibration=out_dir / "digits_calibration.npy",
        mlp_accuracy=float(mlp.score(split.x_eval, split.y_eval)),
        logreg_accuracy=float(logreg.score(split.x_eval, split.y_eval)),
    )
    _to_onnx(mlp, artifacts.float_model)
    _to_onnx(logreg, artifacts.logreg_model)
    np.save(artifacts.eval_x, split.x_eval)
    np.save(artifacts.eval_y, split.y_eval)
    np.save(artifacts.calibration, split.x_calib)
    log.info("digits models in %s: mlp accuracy %.3f, logreg accuracy %.3f",
             out_dir, artifacts.mlp_accuracy, artifacts.logreg_accuracy)
    return artifacts


#: Node i of a simulated federation holds mostly the classes of group i (non-IID, as on
#: real devices, where each sees its own mix of inputs).
NODE_CLASS_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))


@dataclass(frozen=True)
class NodeShards:
    """The digits set as per-node training shards plus a central test set."""

    node_x: list[np.ndarray]
    node_y: list[np.ndarray]
    x_test: np.ndarray
    y_test: np.ndarray


def non_iid_shards(seed: int = 0, *, own_share: float = 0.85,
                   class_groups: tuple[tuple[int, ...], ...] = NODE_CLASS_GROUPS
                   ) -> NodeShards:
    """One shard per class group: each node gets ``own_share`` of its examples from its
    group and the rest from the others; a fifth of the set is the central test set."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = len(y) // 5
    test, pool = order[:n_test], order[n_test:]
    n_nodes = len(class_groups)
    owner = np.empty(len(pool), dtype=np.int64)
    for i, label in enumerate(y[pool]):
        home = next(g for g, classes in enumerate(class_groups) if label in classes)
        if rng.random() < own_share:
            owner[i] = home
        else:
            owner[i] = rng.choice([g for g in range(n_nodes) if g != home])
    return NodeShards([x[pool[owner == g]] for g in range(n_nodes)],
                      [y[pool[owner == g]] for g in range(n_nodes)], x[test], y[test])
