"""Drift windows per model and model version, fed in batches by the flusher thread.

For every model with a reference profile, each batch of logged predictions becomes one
``SummaryBuilder.add_batch(x, y)`` call (vectorized: ``x`` is every input flattened per
row, in the model's input order; ``y`` the drift output flattened per row). Every
``window_s`` the flusher calls :meth:`DriftSummarizer.finish`, which closes one window per
(model, version) that saw predictions, runs the local :class:`DriftDetector` on it and
returns what to publish. Not thread-safe: only the flusher thread calls it.

A model served under a version other than the configured one (after an over-the-air
update) is summarized against the same reference profile; the summary names the actual
version, and its ``ref`` digest says which binning was used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.daemon.errors import ConfigError
from edgefleet.agent.drift import (
    DriftDetector,
    DriftError,
    DriftVerdict,
    ReferenceProfile,
    SummaryBuilder,
    WindowSummary,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClosedWindow:
    """One finished window: the summary to publish and the local verdict on it."""

    model: str
    version: str
    summary: WindowSummary
    verdict: DriftVerdict | None  # None when the detector refused the summary


def load_reference(path: Path) -> ReferenceProfile:
    """Read a ``ReferenceProfile.to_dict()`` JSON file.

    Raises:
        ConfigError: missing, not JSON, or not a valid profile.
    """
    try:
        return ReferenceProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ConfigError(f"reference profile {path}: no such file") from None
    except (OSError, ValueError, DriftError) as e:
        raise ConfigError(f"reference profile {path}: {e}") from e


class _ModelDrift:
    def __init__(self, name: str, reference: ReferenceProfile, input_names: Sequence[str],
                 output_names: Sequence[str]) -> None:
        self.name = name
        self.reference = reference
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)  # concatenated per row, in this order
        self.builders: dict[str, SummaryBuilder] = {}
        self.detectors: dict[str, DriftDetector] = {}
        self.disabled = False


def _profiled_outputs(reference: ReferenceProfile) -> tuple[str, ...]:
    """The output tensors the profile's output columns (``name`` / ``name[i]``) come from,
    in column order."""
    names: list[str] = []
    for column in reference.outputs:
        tensor = column.name.split("[", 1)[0]
        if not names or names[-1] != tensor:
            names.append(tensor)
    return tuple(names) if len(set(names)) == len(names) else ()


def _output_matrix(outputs: dict[str, np.ndarray], names: Sequence[str], rows: int
                   ) -> np.ndarray:
    """The chosen outputs of one batch, each flattened per row, side by side."""
    parts = [np.asarray(outputs[n], dtype=np.float64).reshape(rows, -1) for n in names]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


class DriftSummarizer:
    """Window summaries and local alarms for every model that has a reference profile."""

    def __init__(self) -> None:
        self._models: dict[str, _ModelDrift] = {}

    def add_model(self, name: str, reference: ReferenceProfile, *, input_names: Sequence[str],
                  output_names: Sequence[str], output_widths: Sequence[int | None],
                  drift_output: str | None = None) -> None:
        """Register a model and choose the output(s) its drift windows summarize.

        ``drift_output`` names one output. Otherwise the outputs the reference profile's
        columns were built from (``edgefleet release`` profiles every output, its columns
        named ``tensor`` or ``tensor[i]``) are used when their widths add up, else the
        first output as wide as the profile's outputs.

        Raises:
            ConfigError: ``drift_output`` is not an output of the model, or no output (or
                set of outputs) has as many columns as the reference profile's outputs.
        """
        want = len(reference.outputs)
        if drift_output is not None:
            if drift_output not in output_names:
                raise ConfigError(f"model {name}: drift_output {drift_output!r} is not one of "
                                  f"its outputs {list(output_names)}")
            chosen: Sequence[str] = (drift_output,)
        else:
            widths = dict(zip(output_names, output_widths, strict=True))
            named = _profiled_outputs(reference)
            fits = [n for n in output_names if widths[n] == want]
            if named and all(n in widths for n in named) and \
                    sum(widths[n] or 0 for n in named) == want:
                chosen = named
            elif fits:
                chosen = fits[:1]
            else:
                raise ConfigError(
                    f"model {name}: no output has {want} column(s) like the reference "
                    f"profile's outputs; set drift_output")
        self._models[name] = _ModelDrift(name, reference, input_names, chosen)

    def has(self, name: str) -> bool:
        return name in self._models

    def add(self, model: str, version: str, inputs: Sequence[dict[str, Any]],
            outputs: Sequence[dict[str, np.ndarray]]) -> None:
        """Add one batch of successful predictions of ``model`` served as ``version``."""
        md = self._models.get(model)
        if md is None or md.disabled or not inputs:
            return
        try:
            x = np.concatenate([_row_matrix(i, md.input_names) for i in inputs])
            y = np.concatenate([_output_matrix(o, md.output_names, x_rows(i, md.input_names))
                                for i, o in zip(inputs, outputs, strict=True)])
            builder = md.builders.get(version)
            if builder is None:
                builder = md.builders[version] = SummaryBuilder(md.reference, version)
            builder.add_batch(x, y)
        except (DriftError, ValueError, KeyError) as e:
            md.disabled = True
            log.warning("drift summaries of model %s turned off: its inputs/outputs do not "
                        "fit the reference profile (%s)", model, e)

    def finish(self, start_ts: float, end_ts: float) -> list[ClosedWindow]:
        """Close the current window of every (model, version) that saw predictions."""
        closed = []
        for md in self._models.values():
            builders, md.builders = md.builders, {}
            for version, builder in builders.items():
                summary = builder.finish(start_ts, end_ts)
                detector = md.detectors.get(version)
                if detector is None:
                    detector = md.detectors[version] = DriftDetector(md.reference)
                try:
                    verdict: DriftVerdict | None = detector.update(summary)
                except DriftError as e:
                    log.warning("drift check of %s %s failed: %s", md.name, version, e)
                    verdict = None
                if verdict is not None and verdict.changed:
                    log.warning("drift alarm %s for model %s version %s (%s)",
                                "ON" if verdict.alarm else "off", md.name, version,
                                verdict.report.status.name)
                closed.append(ClosedWindow(md.name, version, summary, verdict))
        return closed


def x_rows(inputs: dict[str, Any], names: Sequence[str]) -> int:
    return int(np.shape(inputs[names[0]])[0])


def _row_matrix(inputs: dict[str, Any], names: Sequence[str]) -> np.ndarray:
    """One prediction's inputs as a [batch, features] matrix, inputs in model order."""
    if len(names) == 1:
        a = np.asarray(inputs[names[0]])
        return a.reshape(a.shape[0], -1)
    parts = [np.asarray(inputs[n]) for n in names]
    return np.concatenate([p.reshape(p.shape[0], -1).astype(np.float64) for p in parts],
                          axis=1)


def drift_event(window: ClosedWindow) -> dict[str, Any] | None:
    """The ``events`` body announcing an alarm change, or None when nothing changed: the
    contract's ``{"events": [{"kind", "ts", ...}]}`` with one ``drift_alarm`` event."""
    v = window.verdict
    if v is None or not v.changed:
        return None
    return {"events": [{
        "kind": "drift_alarm", "ts": window.summary.end_ts, "model": window.model,
        "version": window.version, "alarm": v.alarm, "status": v.report.status.name.lower(),
        "columns": [c.name for c in v.report.columns if c.over],
        "start": window.summary.start_ts, "end": window.summary.end_ts}]}
