"""The trainable-model contract and the numpy dense network both families share.

Everything here is pure numpy and does no I/O: weights in, arrays in, numbers out. A
model is a stack of dense layers (``x @ W + b``, ReLU between layers, softmax at the
end); a family is just a :data:`LAYOUTS` entry naming the layers. The layer names are
the ONNX initializer names (``"<layer>.weight"`` [in, out] and ``"<layer>.bias"`` [out]),
so ``weights()`` can be written straight into an exported graph and read back from one.

Training is plain mini-batch SGD on the mean softmax cross-entropy, optionally with an
L2 penalty on the weight matrices and the FedProx proximal term
``mu / 2 * ||w - w_global||^2`` over every parameter. Given the same seed, data and
calls, a model produces bit-identical weights.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

_F32 = np.dtype(np.float32)


class Family(enum.StrEnum):
    """The model families that can be trained on a device and exported to ONNX."""

    LOGREG = "logreg"
    MLP = "mlp"


@dataclass(frozen=True)
class LayerSpec:
    """One dense layer of a family's layout: its name prefix and whether ReLU follows."""

    name: str
    relu: bool


#: Layer layout per family; the names become ONNX initializer names.
LAYOUTS: Mapping[Family, tuple[LayerSpec, ...]] = {
    Family.LOGREG: (LayerSpec("linear", relu=False),),
    Family.MLP: (LayerSpec("hidden", relu=True), LayerSpec("output", relu=False)),
}


# -- errors -------------------------------------------------------------------------------


class ModelError(Exception):
    """Base of every error raised by ``edgefleet.federated.models``."""


class WeightsError(ModelError, ValueError):
    """Weights that do not fit the model or graph: unknown/missing key, shape, dtype, NaN."""


class DataError(ModelError, ValueError):
    """Data, a training option or a model size the model cannot use."""


class OnnxFormatError(ModelError, ValueError):
    """ONNX bytes that are not a model, or not a graph this package built."""


# -- results and the protocol --------------------------------------------------------------


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` did.

    Attributes:
        loss: mean cross-entropy on the training data after the last epoch (no
            regularization terms), so it is comparable to ``EvalResult.loss``.
        accuracy: training accuracy after the last epoch, in [0, 1].
        n: number of training samples.
        epochs: epochs run.
    """

    loss: float
    accuracy: float
    n: int
    epochs: int


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy, accuracy in [0, 1] and sample count on some labelled data."""

    loss: float
    accuracy: float
    n: int


@runtime_checkable
class TrainableModel(Protocol):
    """A classifier trainable on a device with numpy and exportable to ONNX."""

    family: str
    n_features: int
    n_classes: int

    def weights(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, keyed by their ONNX initializer names."""
        ...

    def set_weights(self, w: Mapping[str, np.ndarray]) -> None:
        """Replace every parameter. Raises WeightsError (a ValueError) naming the key."""
        ...

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        lr: float,
        batch_size: int = 32,
        proximal_mu: float = 0.0,
        global_weights: Mapping[str, np.ndarray] | None = None,
        l2: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> FitResult:
        """Train in place with mini-batch SGD."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> EvalResult:
        """Loss, accuracy and sample count on labelled data."""
        ...

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 [N, C]."""
        ...


# -- numerics ------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for any finite logits (the row maximum is subtracted)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy via log-sum-exp (no log(0), no overflow)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


# -- validation ----------------------------------------------------------------------------


def check_weights(
    given: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], what: str
) -> dict[str, np.ndarray]:
    """Check a full set of float32 weights against name -> shape; return float32 copies.

    Raises:
        WeightsError: a missing or unknown key, a non-array, a wrong dtype or shape, or
            NaN/inf values; the message names the key.
    """
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise WeightsError(f"{what}: unknown weight {unknown[0]!r}; expected {sorted(expected)}")
    missing = sorted(set(expected) - set(given))
    if missing:
        raise WeightsError(f"{what}: missing weight {missing[0]!r}; expected {sorted(expected)}")
    out: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        out[name] = check_tensor(name, given[name], shape, _F32, what)
    return out


def check_tensor(
    name: str, value: object, shape: tuple[int, ...], dtype: np.dtype, what: str
) -> np.ndarray:
    """One weight: exactly ``dtype`` and ``shape``, all finite; returns a private copy.

    Raises:
        WeightsError: naming ``name``.
    """
    if not isinstance(value, np.ndarray):
        raise WeightsError(f"{what}: weight {name!r} is a {type(value).__name__}, not an array")
    if value.dtype != dtype:
        raise WeightsError(f"{what}: weight {name!r} has dtype {value.dtype}, expected {dtype}")
    if value.shape != shape:
        raise WeightsError(f"{what}: weight {name!r} has shape {value.shape}, expected {shape}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        raise WeightsError(f"{what}: weight {name!r} has {bad} NaN/inf value(s)")
    return np.array(value, dtype=dtype, copy=True)


def _check_features(x: object, n_features: int) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        raise DataError(f"x must be a numeric numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != n_features:
        raise DataError(f"x must have shape (N, {n_features}), got {x.shape}")
    if x.shape[0] == 0:
        raise DataError("x has no samples")
    x32 = x.astype(np.float32, copy=False)
    if not np.isfinite(x32).all():
        raise DataError("x has NaN/inf values")
    return x32


def _check_labels(y: object, n: int, n_classes: int) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
        raise DataError(
            f"y must be an integer numpy array of class indices, got "
            f"{getattr(y, 'dtype', type(y).__name__)}"
        )
    if y.shape != (n,):
        raise DataError(f"y must have shape ({n},) to match x, got {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"y must hold class indices in [0, {n_classes}), got "
                        f"[{y.min()}, {y.max()}]")
    return y.astype(np.int64, copy=False)


def _check_hyper(epochs: int, lr: float, batch_size: int, proximal_mu: float, l2: float) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise DataError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise DataError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
        raise DataError(f"proximal_mu must be a finite number >= 0, got {proximal_mu!r}")
    if not (math.isfinite(l2) and l2 >= 0):
        raise DataError(f"l2 must be a finite number >= 0, got {l2!r}")


# -- the shared implementation ---------------------------------------------------------------


class DenseClassifier:
    """A softmax classifier made of dense layers; subclasses fix the family and its init.

    Not thread-safe: one training or prediction at a time per instance.
    """

    family: str

    def __init__(self, family: Family, sizes: tuple[int, ...], params: dict[str, np.ndarray],
                 seed: int) -> None:
        self.family = family
        self.n_features = sizes[0]
        self.n_classes = sizes[-1]
        self._layers = LAYOUTS[family]
        self._shapes: dict[str, tuple[int, ...]] = {}
        for spec, fan_in, fan_out in zip(self._layers, sizes[:-1], sizes[1:], strict=True):
            self._shapes[f"{spec.name}.weight"] = (fan_in, fan_out)
            self._shapes[f"{spec.name}.bias"] = (fan_out,)
        self._params = check_weights(params, self._shapes, f"{family} init")
        # Shuffling uses the model's own generator unless fit() gets one: reproducible.
        self._rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        sizes = [self.n_features] + [self._shapes[f"{s.name}.bias"][0] for s in self._layers]
        return f"<{type(self).__name__} {'-'.join(map(str, sizes))}>"

    # -- weights ----------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Initializer name -> shape, in layer order."""
        return dict(self._shapes)

    def weights(self) -> dict[str, np.ndarray]:
        """Copies of the parameters (float32), keyed by ONNX initializer name."""
        return {name: value.copy() for name, value in self._params.items()}

    def set_weights(self, w: Mapping[str, np.ndarray]) -> None:
        """Replace every parameter at once; nothing changes if any weight is refused.

        Raises:
            WeightsError: (a ValueError) missing/unknown key, or a weight that is not a
                float32 array of the right shape with finite values; names the key.
        """
        self._params = check_weights(w, self._shapes, f"{self.family} set_weights")

    # -- inference --------------------------------------------------------------------------
    def _forward(
        self, x: np.ndarray, params: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits and the input of every layer (what backprop needs)."""
        p = self._params if params is None else params
        inputs = []
        h = x
        for spec in self._layers:
            inputs.append(h)
            h = h @ p[f"{spec.name}.weight"] + p[f"{spec.name}.bias"]
            if spec.relu:
                h = np.maximum(h, 0.0)
        return h, inputs

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (float32 [N, C]), computed as the exported graph does.

        Raises:
            DataError: ``x`` is not a finite numeric [N, n_features] array.
        """
        logits, _ = self._forward(_check_features(x, self.n_features))
        return softmax(logits).astype(np.float32, copy=False)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> EvalResult:
        """Mean cross-entropy and accuracy on labelled data.

        Raises:
            DataError: ``x`` or ``y`` do not fit the model.
        """
        x32 = _check_features(x, self.n_features)
        labels = _check_labels(y, len(x32), self.n_classes)
        logits, _ = self._forward(x32)
        return EvalResult(
            loss=cross_entropy(logits, labels),
            accuracy=float(np.mean(logits.argmax(axis=1) == labels)),
            n=len(labels),
        )

    # -- training ---------------------------------------------------------------------------
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        lr: float,
        batch_size: int = 32,
        proximal_mu: float = 0.0,
        global_weights: Mapping[str, np.ndarray] | None = None,
        l2: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> FitResult:
        """Train in place with mini-batch SGD on softmax cross-entropy.

        Args:
            x, y: float features [N, n_features] and int class indices [N].
            epochs, lr, batch_size: SGD schedule (constant learning rate, data shuffled
                every epoch, the last batch may be smaller).
            proximal_mu: FedProx coefficient; adds ``mu/2 * ||w - w_global||^2`` over all
                parameters when > 0.
            global_weights: the anchor for the proximal term. None means the weights this
                call starts from (FedProx's round-start global model).
            l2: L2 penalty ``l2/2 * ||W||^2`` on the weight matrices (not the biases).
            rng: shuffling generator; defaults to the model's own seeded generator.

        Returns:
            Loss and accuracy on ``x, y`` after training (see :class:`FitResult`).

        Raises:
            DataError: bad data or hyper-parameters.
            WeightsError: ``global_weights`` do not fit the model.
        """
        _check_hyper(epochs, lr, batch_size, proximal_mu, l2)
        x32 = _check_features(x, self.n_features)
        labels = _check_labels(y, len(x32), self.n_classes)
        anchor: dict[str, np.ndarray] | None = None
        if proximal_mu > 0:
            anchor = (check_weights(global_weights, self._shapes, "global_weights")
                      if global_weights is not None else self.weights())
        gen = rng if rng is not None else self._rng
        n = len(x32)
        params = {k: v.copy() for k, v in self._params.items()}
        for _ in range(epochs):
            order = gen.permutation(n)
            # Overflow can only come from divergence, which the check below reports.
            with np.errstate(over="ignore", invalid="ignore"):
                for start in range(0, n, batch_size):
                    idx = order[start:start + batch_size]
                    self._step(params, x32[idx], labels[idx], lr=lr, l2=l2,
                               proximal_mu=proximal_mu, anchor=anchor)
            if not all(np.isfinite(p).all() for p in params.values()):
                raise DataError(
                    f"training diverged (NaN/inf weights) with lr={lr}; lower the learning "
                    "rate; the model's weights were left unchanged"
                )
        self._params = params
        result = self.evaluate(x32, labels)
        log.debug("%s fit: %d samples, %d epochs, loss %.4f, accuracy %.4f",
                  self.family, n, epochs, result.loss, result.accuracy)
        return FitResult(loss=result.loss, accuracy=result.accuracy, n=n, epochs=epochs)

    def _step(
        self,
        params: dict[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        *,
        lr: float,
        l2: float,
        proximal_mu: float,
        anchor: Mapping[str, np.ndarray] | None,
    ) -> None:
        """One SGD step on one batch, in place."""
        for name, data_grad in self._gradients(params, x, y).items():
            grad = data_grad
            if l2 > 0 and name.endswith(".weight"):
                grad = grad + np.float32(l2) * params[name]
            if anchor is not None:
                grad = grad + np.float32(proximal_mu) * (params[name] - anchor[name])
            params[name] -= np.float32(lr) * grad

    def _gradients(
        self, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Gradients of the mean cross-entropy of one batch, by backpropagation."""
        logits, inputs = self._forward(x, params)
        delta = softmax(logits)
        delta[np.arange(len(y)), y] -= 1.0
        delta /= np.float32(len(y))
        grads: dict[str, np.ndarray] = {}
        for i in range(len(self._layers) - 1, -1, -1):
            spec = self._layers[i]
            w = params[f"{spec.name}.weight"]
            grads[f"{spec.name}.weight"] = inputs[i].T @ delta
            grads[f"{spec.name}.bias"] = delta.sum(axis=0)
            if i > 0:
                delta = delta @ w.T
                if self._layers[i - 1].relu:
                    # inputs[i] is the previous layer's post-ReLU output: its gradient mask.
                    delta = delta * (inputs[i] > 0)
        return {k: v.astype(np.float32, copy=False) for k, v in grads.items()}
