"""A node's local labelled data: an ``.npz`` with ``x`` (float features) and ``y`` (labels).

The device agent (later: its feedback store) writes the file; the ClientApp reads it from
the path in the SuperNode's node config (``data-path``). Raw data never leaves the node:
only weights and metrics do. The split into a training part and a held-out share is
deterministic for a given seed, so evaluation always uses the same held-out examples.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.federated.flower.errors import NodeDataError


@dataclass(frozen=True)
class NodeData:
    """A node's examples split into training and held-out parts."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray

    @property
    def n_total(self) -> int:
        """All labelled examples on the node."""
        return int(self.y_train.shape[0] + self.y_holdout.shape[0])


def write_node_data(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Atomically write ``x`` (float32 [N, F]) and ``y`` (int64 [N]) to ``path``.

    Raises:
        NodeDataError: shapes do not match.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise NodeDataError(f"need x [N, F] and y [N], got {x.shape} and {y.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_node_data(path: Path, *, holdout_fraction: float, seed: int) -> NodeData:
    """Read ``path`` and split off a deterministic held-out share.

    At least one example goes to each part when the node has two or more.

    Raises:
        NodeDataError: the file is missing or does not hold matching ``x``/``y`` arrays.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.float32)
            y = np.asarray(data["y"])
    except (OSError, KeyError, ValueError) as e:
        raise NodeDataError(f"cannot read node data {path}: {e}") from e
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise NodeDataError(f"{path}: need x [N, F] and y [N], got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise NodeDataError(f"{path}: y must hold integer class indices, got {y.dtype}")
    y = y.astype(np.int64)
    n = int(y.shape[0])
    order = np.random.default_rng(seed).permutation(n)
    n_holdout = min(max(round(n * holdout_fraction), 1), n - 1) if n >= 2 else 0
    hold, train = order[:n_holdout], order[n_holdout:]
    return NodeData(x_train=x[train], y_train=y[train], x_holdout=x[hold], y_holdout=y[hold])
