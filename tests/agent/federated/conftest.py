"""Fixtures of the device-side federated tests: a real model, store and SuperLink."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.daemon.feedback import FeedbackStore
from edgefleet.agent.runtime import ModelRunner, load_model
from edgefleet.federated.flower.processes import NO_RESTART, SuperLink
from edgefleet.federated.flower.tls import make_tls_files
from edgefleet.tools.modelgen import onnx_models

N_FEATURES = 16
N_CLASSES = 4
_ids = itertools.count(1)


@pytest.fixture(scope="session")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fl_models") / "mlp.onnx"
    onnx_models.mlp(path, (N_FEATURES, 32, N_CLASSES), seed=5)
    return path


@pytest.fixture
def runner(mlp_path: Path) -> Iterator[ModelRunner]:
    with load_model(mlp_path) as r:
        yield r


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    s = FeedbackStore(tmp_path / "feedback.sqlite")
    yield s
    s.close()


@dataclass(frozen=True)
class Labelled:
    """What :func:`predict_and_label` stored, oldest first."""

    ids: list[str]
    x: np.ndarray  # [N, F] one row per prediction
    y: np.ndarray  # [N]


def predict_and_label(store: FeedbackStore, runner: ModelRunner, n: int, *,
                      model: str = "mlp", seed: int = 0, label: bool = True) -> Labelled:
    """Run the real model on ``n`` single-row inputs, store them, attach true labels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, N_FEATURES)).astype(np.float32)
    y = rng.integers(0, N_CLASSES, size=n)
    ids = []
    for i in range(n):
        pid = f"p{next(_ids)}"
        inputs = {"input": x[i:i + 1]}
        outputs = runner.predict(inputs)
        store.add_many([(pid, model, "1.0", time.time(), inputs, outputs)])
        if label:
            store.feedback(pid, int(y[i]))
        ids.append(pid)
    return Labelled(ids, x, y)


@dataclass(frozen=True)
class Link:
    superlink: SuperLink
    ca_cert: Path


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    """A real SuperLink with TLS and SuperNode authentication (as the fleet runs it)."""
    work = tmp_path_factory.mktemp("superlink")
    tls = make_tls_files(work / "tls")
    link = SuperLink(work / "superlink", tls=tls, supernode_auth=True, restart=NO_RESTART)
    try:
        link.start(ready_timeout_s=90)
        yield Link(link, tls.ca_cert)
    finally:
        link.stop()
