"""Export the device's labelled feedback of one model as the ClientApp's training data.

The feedback store (``edgefleet.agent.daemon.feedback``) keeps every prediction with its
inputs, outputs and, once an application sent it, the true label. :func:`export_dataset`
turns the newest labelled predictions of one model into the ``.npz`` that
``edgefleet.federated.flower.data.load_node_data`` reads: ``x`` float32 ``[N, F]`` (the
model's single input tensor, each row flattened) and ``y`` int64 ``[N]`` (class indices).
The ClientApp itself splits off the held-out share.

Privacy: the file stays on the device (mode 0600 in a 0700 directory under the daemon's
state_dir) and is only read by the local ClientApp process; Flower sends weights and
metrics, never this data.

Examples that cannot be used are skipped and counted: predictions of models with more
than one input, labels that are not non-negative integers (or, for a batch prediction,
not one such label per row), non-finite features, and rows whose width differs from the
newest example's.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.daemon.errors import StoreError
from edgefleet.agent.daemon.feedback import FeedbackStore, StoredPrediction
from edgefleet.agent.federated.errors import DatasetError
from edgefleet.federated.flower.data import write_node_data

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetStats:
    """What the last export wrote."""

    n: int  # examples (rows) in the file
    classes: tuple[int, ...]  # distinct labels, sorted
    n_features: int  # 0 when empty
    skipped: int  # unusable rows left out
    refreshed_at: float  # wall clock (time.time()) of the export
    path: Path


@dataclass(frozen=True)
class Examples:
    """Training rows, newest first."""

    x: np.ndarray  # float32 [N, F]
    y: np.ndarray  # int64 [N]
    skipped: int


def examples_from(predictions: Iterable[StoredPrediction], max_examples: int) -> Examples:
    """Turn labelled predictions (newest first) into at most ``max_examples`` rows."""
    rows: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    width: int | None = None
    for p in predictions:
        if len(rows) >= max_examples:
            break
        pairs = _rows(p)
        if pairs is None:
            skipped += 1
            continue
        for x, y in pairs:
            if len(rows) >= max_examples:
                break
            if width is None:
                width = x.shape[0]
            if x.shape[0] != width or not np.all(np.isfinite(x)):
                skipped += 1
                continue
            rows.append(x)
            labels.append(y)
    if not rows:
        return Examples(np.zeros((0, width or 0), np.float32), np.zeros(0, np.int64), skipped)
    return Examples(np.stack(rows).astype(np.float32), np.asarray(labels, np.int64), skipped)


def _rows(p: StoredPrediction) -> list[tuple[np.ndarray, int]] | None:
    if len(p.inputs) != 1:
        return None
    (tensor,) = p.inputs.values()
    if tensor.ndim == 0 or tensor.dtype.kind not in "fiub":
        return None
    batch = tensor.shape[0]
    flat = np.asarray(tensor, dtype=np.float32).reshape(batch, -1)
    labels = p.label if isinstance(p.label, list) else [p.label]
    if len(labels) != batch:
        return None
    ints = [_class_index(v) for v in labels]
    if any(v is None for v in ints):
        return None
    return [(flat[i], int(v)) for i, v in enumerate(ints) if v is not None]


def _class_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 0:
        return int(value)
    return None


def export_dataset(store: FeedbackStore, model: str, path: Path, *, max_examples: int,
                   clock: Callable[[], float] = time.time) -> DatasetStats:
    """Write the newest ``max_examples`` labelled examples of ``model`` to ``path``.

    Atomic (temp file, fsync, rename): the ClientApp never reads a partial file.

    Raises:
        DatasetError: the store cannot be read or the file cannot be written.
    """
    try:
        predictions = store.labelled(model, limit=max_examples)
    except (StoreError, sqlite3.Error) as e:  # labelled() lets sqlite errors through
        raise DatasetError(f"cannot read labelled feedback of {model}: {e}") from e
    ex = examples_from(predictions, max_examples)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_node_data(path, ex.x, ex.y)  # mkstemp: mode 0600, fsync, os.replace
    except OSError as e:
        raise DatasetError(f"cannot write the dataset {path}: {e}") from e
    stats = DatasetStats(n=int(ex.y.shape[0]),
                         classes=tuple(int(c) for c in np.unique(ex.y)),
                         n_features=int(ex.x.shape[1]), skipped=ex.skipped,
                         refreshed_at=clock(), path=path)
    logger.info("federated dataset of %s: %d examples, %d classes, %d skipped", model,
                stats.n, len(stats.classes), stats.skipped)
    return stats
