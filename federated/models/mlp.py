"""A small multi-layer perceptron: one ReLU hidden layer, then a softmax output layer.

Initializers: ``hidden.weight`` float32 [F, H], ``hidden.bias`` [H], ``output.weight``
[H, C], ``output.bias`` [C]. Weights start He-normal (hidden, ReLU) and Glorot-normal
(output) from the seed, biases at zero, so two models with the same seed and sizes
start identical, which is what federated averaging from a common global model assumes.
"""

from __future__ import annotations

import numpy as np

from edgefleet.federated.models.base import DenseClassifier, Family


class MLP(DenseClassifier):
    """``n_features`` -> ``hidden`` (ReLU) -> ``n_classes`` (softmax)."""

    def __init__(self, n_features: int, n_classes: int, *, hidden: int = 32,
                 seed: int = 0) -> None:
        init = np.random.default_rng(seed)
        w1 = init.normal(0.0, np.sqrt(2.0 / n_features), size=(n_features, hidden))
        w2 = init.normal(0.0, np.sqrt(2.0 / (hidden + n_classes)), size=(hidden, n_classes))
        params = {
            "hidden.weight": w1.astype(np.float32),
            "hidden.bias": np.zeros(hidden, dtype=np.float32),
            "output.weight": w2.astype(np.float32),
            "output.bias": np.zeros(n_classes, dtype=np.float32),
        }
        # The shuffling generator is seeded apart from the init generator.
        super().__init__(Family.MLP, (n_features, hidden, n_classes), params, seed + 1)
