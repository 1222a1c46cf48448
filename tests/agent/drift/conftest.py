"""Simulated model data for the drift tests: four differently shaped features and one
output squashed from a linear score, so drift on a feature also moves the output."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgefleet.agent.drift import ReferenceProfile

FEATURES = ["normal", "lognormal", "uniform", "gamma"]
OUTPUTS = ["score"]
Gen = Callable[..., tuple[np.ndarray, np.ndarray]]


def simulate(rng: np.random.Generator, n: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """n rows; ``scale`` multiplies the first (zero-mean normal) feature."""
    x = np.column_stack([rng.normal(size=n) * scale, rng.lognormal(0, 0.5, size=n),
                         rng.uniform(-1, 1, size=n), rng.gamma(2.0, size=n)])
    y = 1.0 / (1.0 + np.exp(-(x @ np.array([0.8, -0.5, 0.3, 0.2]))))
    return x, y.reshape(-1, 1)


@pytest.fixture(scope="session")
def gen() -> Gen:
    return simulate


@pytest.fixture(scope="session")
def reference() -> ReferenceProfile:
    x, y = simulate(np.random.default_rng(12345), 50_000)
    return ReferenceProfile.build(x, FEATURES, y, OUTPUTS)
