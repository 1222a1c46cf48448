"""Trainable model families for federated learning: numpy training, ONNX in and out.

Devices train these models with numpy only (no deep-learning framework on the device);
the server exports, quantizes and ships them as ONNX. Weights are always a
``dict[str, np.ndarray]`` of float32 arrays keyed by the ONNX initializer names, so the
same dict travels through Flower, FedAvg and ``write_weights_into`` unchanged.

* :func:`create` builds a model of a :class:`Family` (``"logreg"``, ``"mlp"``).
* :class:`TrainableModel` is the protocol (``weights``, ``set_weights``, ``fit``,
  ``evaluate``, ``predict_proba``); results are :class:`FitResult` / :class:`EvalResult`.
* :func:`to_onnx`, :func:`from_onnx`, :func:`write_weights_into` convert to and from
  ONNX graphs (see ``onnx_io``).

Every error is a :class:`ModelError`; the ones about bad input are also ``ValueError``.
This package does no I/O: bytes and arrays in, bytes and arrays out.
"""

from __future__ import annotations

from edgefleet.federated.models.base import (
    LAYOUTS,
    DataError,
    EvalResult,
    Family,
    FitResult,
    ModelError,
    OnnxFormatError,
    TrainableModel,
    WeightsError,
)
from edgefleet.federated.models.logreg import LogisticRegression
from edgefleet.federated.models.mlp import MLP
from edgefleet.federated.models.onnx_io import from_onnx, to_onnx, write_weights_into

__all__ = [
    "LAYOUTS",
    "MLP",
    "DataError",
    "EvalResult",
    "Family",
    "FitResult",
    "LogisticRegression",
    "ModelError",
    "OnnxFormatError",
    "TrainableModel",
    "WeightsError",
    "create",
    "from_onnx",
    "to_onnx",
    "write_weights_into",
]


def create(family: str, n_features: int, n_classes: int, *, hidden: int = 32,
           seed: int = 0) -> TrainableModel:
    """A freshly initialised model of ``family``; the same arguments give the same model.

    Args:
        family: ``"logreg"`` or ``"mlp"``.
        n_features: input width F (>= 1).
        n_classes: number of classes C (>= 2).
        hidden: hidden-layer width for ``"mlp"`` (>= 1); ignored for ``"logreg"``.
        seed: initial weights (mlp) and the default shuffling order during ``fit``.

    Raises:
        ModelError (ValueError): unknown family or sizes out of range.
    """
    try:
        fam = Family(family)
    except ValueError:
        choices = ", ".join(repr(f.value) for f in Family)
        raise DataError(f"unknown model family {family!r}; choose one of {choices}") from None
    for name, value, low in (("n_features", n_features, 1), ("n_classes", n_classes, 2),
                             ("hidden", hidden, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    if fam is Family.LOGREG:
        return LogisticRegression(n_features, n_classes, seed=seed)
    return MLP(n_features, n_classes, hidden=hidden, seed=seed)
