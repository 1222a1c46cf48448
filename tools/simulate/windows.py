"""Drift window summaries for simulated devices: real, precomputed, reused.

Building a :class:`~edgefleet.agent.drift.WindowSummary` costs milliseconds (KLL
sketches, moments); 10,000 devices closing a window every minute would spend a core on
it. So :class:`WindowSource` builds ``variants`` real summaries per model version with
the agent's own :class:`~edgefleet.agent.drift.SummaryBuilder` (rows drawn from the
reference profile's sketches, outputs shifted for a faulty version), keeps their JSON,
and hands each device one of them with its own window start and end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgefleet.agent.drift import ReferenceProfile, SummaryBuilder, kll
from edgefleet.agent.drift.profile import ColumnProfile

#: ``version -> output shift`` in reference standard deviations.
ShiftLookup = Callable[[str], float]

_START, _END = -1.0, -2.0  # placeholders replaced per device window
_PLACEHOLDER = f'"start":{_START!r},"end":{_END!r}'


def default_reference(seed: int = 7, rows: int = 4000) -> ReferenceProfile:
    """A synthetic reference: 4 Gaussian features, 3 softmax outputs of a fixed linear map.

    Deterministic for a given ``seed``: the benchmark registers the same profile in the
    fleet server's registry so the server accepts the simulated windows.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    logits = x @ rng.normal(size=(4, 3))
    y = np.exp(logits - logits.max(axis=1, keepdims=True))
    y /= y.sum(axis=1, keepdims=True)
    return ReferenceProfile.build(x, [f"f{i}" for i in range(4)], y,
                                  [f"out{i}" for i in range(3)])


def load_reference(data: object) -> ReferenceProfile:
    """A profile from ``ReferenceProfile.to_dict()`` or any object holding one under
    ``reference_profile`` (a bundle manifest, a registry version).

    Raises:
        edgefleet.agent.drift.DriftError: not a valid profile.
    """
    if isinstance(data, Mapping) and isinstance(data.get("reference_profile"), Mapping):
        data = dict(data["reference_profile"])
    return ReferenceProfile.from_dict(data)


def _sampler(column: ColumnProfile) -> tuple[np.ndarray, np.ndarray, float]:
    items, weights = kll.items_and_weights(column.stats.sketch)
    std = float(np.sqrt(column.stats.moments.variance))
    if items.size == 0:
        return np.zeros(1), np.ones(1), 1.0
    return items, weights / weights.sum(), std if std > 0 else 1.0


@dataclass(frozen=True)
class _Variant:
    prefix: str
    suffix: str


class WindowSource:
    """Real window summaries per version, built once and reused by every device.

    Args:
        reference: the profile the server has for the model's versions.
        shift: output shift per version (``VersionFaults.output_shift``).
        rows: predictions summarized per window.
        variants: distinct summaries per version (devices pick by index).
        seed: random seed of the sampled rows.
    """

    def __init__(self, reference: ReferenceProfile, shift: ShiftLookup, *, rows: int = 120,
                 variants: int = 4, seed: int = 0) -> None:
        self.reference = reference
        self.rows = max(1, rows)
        self.variants = max(1, variants)
        self._shift = shift
        self._seed = seed
        self._features = [_sampler(c) for c in reference.features]
        self._outputs = [_sampler(c) for c in reference.outputs]
        self._cache: dict[str, list[_Variant]] = {}

    def _sample(self, rng: np.random.Generator,
                columns: list[tuple[np.ndarray, np.ndarray, float]], shift: float) -> np.ndarray:
        out = np.empty((self.rows, len(columns)))
        for j, (items, p, std) in enumerate(columns):
            out[:, j] = rng.choice(items, size=self.rows, p=p) + shift * std
        return out

    def _build(self, version: str) -> list[_Variant]:
        shift = self._shift(version)
        rng = np.random.default_rng([self._seed, len(self._cache)])
        variants = []
        for _ in range(self.variants):
            builder = SummaryBuilder(self.reference, version)
            builder.add_batch(self._sample(rng, self._features, 0.0),
                              self._sample(rng, self._outputs, shift))
            text = json.dumps(builder.finish(_START, _END).to_dict() | {"start": _START,
                                                                          "end": _END},
                              separators=(",", ":"), allow_nan=False)
            prefix, found, suffix = text.partition(_PLACEHOLDER)
            if not found:  # pragma: no cover - to_dict always writes start then end
                raise RuntimeError("window summary JSON has no start/end placeholder")
            variants.append(_Variant(prefix, suffix))
        return variants

    def summary(self, version: str, start: float, end: float, index: int = 0) -> str:
        """JSON text of a ``WindowSummary.to_dict()`` for ``version`` over [start, end]."""
        variants = self._cache.get(version)
        if variants is None:
            variants = self._cache[version] = self._build(version)
        v = variants[index % len(variants)]
        return f'{v.prefix}"start":{round(start, 6)!r},"end":{round(end, 6)!r}{v.suffix}'
