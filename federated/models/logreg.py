"""Multinomial logistic regression: one dense layer and a softmax.

Initializers: ``linear.weight`` float32 [F, C] and ``linear.bias`` float32 [C]. The
weights start at zero (the loss is convex, so no symmetry to break): the seed only
drives the shuffling order during training.
"""

from __future__ import annotations

import numpy as np

from edgefleet.federated.models.base import DenseClassifier, Family


class LogisticRegression(DenseClassifier):
    """Softmax regression over ``n_features`` inputs and ``n_classes`` classes."""

    def __init__(self, n_features: int, n_classes: int, *, seed: int = 0) -> None:
        params = {
            "linear.weight": np.zeros((n_features, n_classes), dtype=np.float32),
            "linear.bias": np.zeros(n_classes, dtype=np.float32),
        }
        super().__init__(Family.LOGREG, (n_features, n_classes), params, seed)
