"""The reference profile: what "no drift" looks like, shipped in the model bundle.

Built once from reference data (typically the training or validation set): for every
input feature and every model output column, fixed bin edges at the reference
quantiles with the reference counts, a lossless KLL sketch and moments. Window
summaries count over exactly these edges, so the fleet server merges them by summing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from edgefleet.agent.drift import kll
from edgefleet.agent.drift.bins import (
    DEFAULT_BINS,
    MAX_BINS,
    bin_index,
    quantile_edges,
    validate_edges,
)
from edgefleet.agent.drift.column import ColumnStats, validate_name
from edgefleet.agent.drift.errors import DriftConfigError, DriftDataError
from edgefleet.agent.drift.moments import Moments, batch_moments

VERSION = 1
MAX_COLUMNS = 4096
_REFERENCE_KLL_CHARS = 65536


@dataclass(frozen=True, eq=False)
class ColumnProfile:
    """One column of the reference: its fixed interior ``edges`` and its statistics."""

    edges: np.ndarray
    stats: ColumnStats

    @property
    def name(self) -> str:
        return self.stats.name

    @property
    def bins(self) -> int:
        return int(self.edges.size) + 1


def as_matrix(values: object, names: Sequence[str], what: str) -> np.ndarray:
    """``values`` as a float64 [rows, len(names)] matrix (a 1-D array is one column).

    Raises:
        DriftDataError: not numeric, wrong rank or a column count that does not match.
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DriftDataError(f"{what}: not a numeric array ({e})") from e
    if arr.ndim == 1 and len(names) == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != len(names):
        raise DriftDataError(f"{what}: expected shape [rows, {len(names)}], got {arr.shape}")
    return arr


def _check_names(names: Sequence[str], what: str) -> tuple[str, ...]:
    out = tuple(validate_name(n, f"{what} name") for n in names)
    if len(set(out)) != len(out):
        raise DriftDataError(f"{what}: names must be unique")
    if len(out) > MAX_COLUMNS:
        raise DriftDataError(f"{what}: at most {MAX_COLUMNS} columns")
    return out


def _profile_columns(matrix: np.ndarray, names: tuple[str, ...],
                     bins: int) -> tuple[ColumnProfile, ...]:
    valid = np.isfinite(matrix)
    moments = batch_moments(matrix, valid)
    columns = []
    for j, name in enumerate(names):
        col = matrix[:, j]
        finite = col[valid[:, j]]
        edges = quantile_edges(finite, bins)
        counts = np.bincount(bin_index(edges, finite), minlength=edges.size + 1)
        sketch = kll.new_sketch(kll.REFERENCE_K)
        if finite.size:
            sketch.update(finite.astype(np.float32))
        stats = ColumnStats(name, counts.astype(np.int64), int(col.size - finite.size),
                            Moments.from_arrays(moments, j), sketch)
        columns.append(ColumnProfile(edges, stats))
    return tuple(columns)


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Per-column reference statistics for the inputs (``features``) and the model's
    outputs (``outputs``), in model order."""

    features: tuple[ColumnProfile, ...]
    outputs: tuple[ColumnProfile, ...]

    @classmethod
    def build(cls, x: object, feature_names: Sequence[str], y: object,
              output_names: Sequence[str], *, bins: int = DEFAULT_BINS) -> ReferenceProfile:
        """Profile reference inputs ``x`` [n, features] and model outputs ``y`` [n, k].

        Raises:
            DriftDataError: shapes or names do not match, or there are no rows.
            DriftConfigError: ``bins`` outside [2, 64].
        """
        if not 2 <= bins <= MAX_BINS:
            raise DriftConfigError(f"bins must be in [2, {MAX_BINS}]")
        f_names = _check_names(feature_names, "features")
        o_names = _check_names(output_names, "outputs")
        xm = as_matrix(x, f_names, "reference x")
        ym = as_matrix(y, o_names, "reference y")
        if xm.shape[0] != ym.shape[0] or xm.shape[0] == 0:
            raise DriftDataError("reference x and y must have the same, non-zero row count")
        return cls(_profile_columns(xm, f_names, bins), _profile_columns(ym, o_names, bins))

    @property
    def columns(self) -> tuple[ColumnProfile, ...]:
        """Features then outputs."""
        return self.features + self.outputs

    @cached_property
    def digest(self) -> str:
        """16 hex digits identifying the names and edges; summaries carry it so the
        server never sums counts over different bins."""
        shape = [[[c.name, c.edges.tolist()] for c in cols]
                 for cols in (self.features, self.outputs)]
        text = json.dumps(shape, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (lossless KLL), versioned with ``"v": 1``."""
        def cols(columns: tuple[ColumnProfile, ...]) -> list[dict[str, Any]]:
            return [{**c.stats.to_dict(precision=4), "edges": c.edges.tolist()}
                    for c in columns]

        return {"v": VERSION, "features": cols(self.features), "outputs": cols(self.outputs)}

    @classmethod
    def from_dict(cls, data: object) -> ReferenceProfile:
        """Validate and rebuild a profile from :meth:`to_dict` output.

        Raises:
            DriftDataError: unknown version or malformed content.
        """
        if not isinstance(data, dict) or data.get("v") != VERSION:
            raise DriftDataError(f"reference profile: expected a dict with v = {VERSION}")
        if set(data) != {"v", "features", "outputs"}:
            raise DriftDataError("reference profile: expected keys v, features, outputs")
        return cls(_columns_from(data["features"], "features"),
                   _columns_from(data["outputs"], "outputs"))


def _columns_from(data: object, what: str) -> tuple[ColumnProfile, ...]:
    if not isinstance(data, list) or len(data) > MAX_COLUMNS:
        raise DriftDataError(f"reference {what}: expected a list of columns")
    out = []
    for i, item in enumerate(data):
        where = f"reference {what}[{i}]"
        if not isinstance(item, dict) or "edges" not in item:
            raise DriftDataError(f"{where}: expected a column with edges")
        edges = validate_edges(item["edges"], where)
        rest = {k: v for k, v in item.items() if k != "edges"}
        stats = ColumnStats.from_dict(rest, bins=edges.size + 1, max_n=kll.MAX_N,
                                      max_kll_chars=_REFERENCE_KLL_CHARS, what=where,
                                      k=kll.REFERENCE_K)
        out.append(ColumnProfile(edges, stats))
    _check_names([c.name for c in out], f"reference {what}")
    return tuple(out)
