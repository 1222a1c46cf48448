"""Build a release bundle: a model file plus the manifest the agent's updater reads.

:func:`build_release` loads the model with the agent runtime and measures everything the
manifest needs, then writes ``{name}-{version}.tar`` with
:func:`edgefleet.agent.update.bundle.write_bundle`:

* **reference profile** (drift): the reference inputs and the model's own outputs on them,
  one column per value of a sample. Inputs and outputs are flattened in C order, so a
  column is named ``"<tensor>"`` (one value per sample) or ``"<tensor>[i]"`` (flat index
  ``i``). At most :data:`MAX_PROFILE_COLUMNS` columns: image-sized inputs are refused
  with a clear message rather than profiled pixel by pixel.
* **metrics**: ``accuracy`` with labels, otherwise per-output statistics (``<out>.mean``,
  ``<out>.std``); with a float ``baseline`` model, the measured change from quantization
  (``baseline_accuracy`` and ``accuracy_change_points``, or ``<out>.max_abs_error``).
* **sample input**: a few reference (or evaluation) rows, else random inputs that fit
  the signature; the updater runs it at warm-up.
* **latency budget**: measured p99 of the sample × ``latency_factor``, at least
  ``min_latency_budget_ms`` (devices are slower than build machines).
* **lineage**: ``parent_version``, ``data_digest`` over the data files, per-file sha256,
  ``code_version`` (the edgefleet version), training run / federated round if given.

Errors are :class:`edgefleet.tools.errors.ToolInputError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tools.errors import ToolInputError

log = logging.getLogger(__name__)

BUNDLE_SUFFIX = ".tar"
MAX_PROFILE_COLUMNS = 256  # ~9 KB of JSON each at most: the profile stays < 2.5 MB
MAX_SAMPLE_VALUES = 16384
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TIMED_RUNS = 50
_TIMING_CAP_S = 2.0


def bundle_filename(name: str, version: str) -> str:
    """The fixed bundle (and image-repository target) name: ``{name}-{version}.tar``."""
    return f"{name}-{version}{BUNDLE_SUFFIX}"


@dataclass(frozen=True)
class ReleaseOptions:
    """Tuning of :func:`build_release`.

    Attributes:
        latency_factor: budget = measured p99 (ms) × this.
        min_latency_budget_ms: the budget is never below this.
        latency_budget_ms: use this budget instead of measuring one.
        sample_rows: rows of reference data in the sample input (fewer when the model's
            batch dimension is fixed or the rows are large).
        bins: histogram bins per profile column.
        seed: for random sample inputs.
    """

    latency_factor: float = 5.0
    min_latency_budget_ms: float = 50.0
    latency_budget_ms: float | None = None
    sample_rows: int = 4
    bins: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.latency_factor >= 1 and self.min_latency_budget_ms > 0):
            raise ValueError("latency_factor must be >= 1 and min_latency_budget_ms > 0")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise ValueError("latency_budget_ms must be > 0")
        if self.sample_rows < 1:
            raise ValueError("sample_rows must be >= 1")


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_release` wrote and measured."""

    path: Path
    manifest: Any  # edgefleet.agent.update.bundle.Manifest (kept import-light)
    bundle_sha256: str
    bundle_size: int
    p99_ms: float
    quantized: bool
    reference_rows: int | None = None
    eval_samples: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_text(self) -> str:
        m = self.manifest
        lines = [
            f"bundle:     {self.path} ({self.bundle_size} bytes, sha256 {self.bundle_sha256})",
            f"model:      {m.name} {m.version} ({m.framework.value}"
            f"{', quantized' if self.quantized else ''}, {m.model_size} bytes)",
            f"latency:    p99 {self.p99_ms:.3f} ms measured, budget {m.latency_budget_ms:g} ms",
        ]
        profile = m.reference_profile
        if profile is None:
            lines.append("reference:  none (no drift profile; pass --reference)")
        else:
            lines.append(f"reference:  {self.reference_rows} rows, "
                         f"{len(profile.get('features', []))} feature and "
                         f"{len(profile.get('outputs', []))} output columns")
        metrics = ", ".join(f"{k}={v:.6g}" for k, v in sorted(m.metrics.items()))
        lines.append(f"metrics:    {metrics or 'none (pass --eval)'}")
        lineage = ", ".join(f"{k}={v}" for k, v in sorted(m.lineage.items()) if v)
        lines.append(f"lineage:    {lineage}")
        lines += [f"note:       {n}" for n in self.notes]
        return "\n".join(lines)


def check_release_name(value: str, what: str) -> str:
    """``value`` if usable as a bundle, target and registry name/version.

    Raises:
        ToolInputError: otherwise.
    """
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise ToolInputError(f"invalid {what} {value!r}: 1-64 of letters, digits, '.', '_', "
                             "'-', starting with a letter or digit, no '..'")
    return value


def build_release(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str] = ".",
    *,
    name: str,
    version: str,
    reference: str | os.PathLike[str] | None = None,
    eval_x: str | os.PathLike[str] | None = None,
    eval_y: str | os.PathLike[str] | None = None,
    parent: str | None = None,
    baseline: str | os.PathLike[str] | None = None,
    training_run: str | None = None,
    federated_round: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    options: ReleaseOptions | None = None,
    overwrite: bool = False,
) -> BuildReport:
    """Measure ``model`` and write its bundle.

    Args:
        model: an ``.onnx`` or ``.tflite`` file.
        out: a directory (the bundle is ``out/{name}-{version}.tar``) or that file path.
        reference: reference inputs (``.npy``; ``.npz`` with one array per input).
        eval_x, eval_y: evaluation inputs and integer labels [N] (or one-hot [N, C]).
        parent: the version this one derives from.
        baseline: the float model a quantized ``model`` was made from (needs ``eval_x``).
        overwrite: replace an existing bundle file (refused otherwise).

    Raises:
        ToolInputError: a missing or unreadable file, not a model, data that does not fit
            the model, labels of another length, an invalid name, an existing bundle.
    """
    from edgefleet.agent import agent_version
    from edgefleet.agent.runtime import load_model
    from edgefleet.agent.runtime.errors import ModelLoadError, RuntimeFault
    from edgefleet.agent.update.bundle import BundleError, file_sha256

    options = options or ReleaseOptions()
    check_release_name(name, "name")
    check_release_name(version, "version")
    if parent is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,128}", parent):
        raise ToolInputError(f"invalid parent {parent!r}: a version or <model>@<version>")
    if eval_y is not None and eval_x is None:
        raise ToolInputError("labels need evaluation inputs: pass --eval with --labels")
    if baseline is not None and eval_x is None and reference is None:
        raise ToolInputError("comparing with a baseline needs --eval (or --reference) data")
    model_path = Path(model)
    if not model_path.is_file():
        raise ToolInputError(f"{model_path}: no such model file")
    dest = _destination(Path(out), name, version, overwrite)
    try:
        runner = load_model(model_path)
    except ModelLoadError as e:
        raise ToolInputError(str(e)) from e
    try:
        with runner:
            measured = _measure(runner, model_path, reference=reference, eval_x=eval_x,
                                eval_y=eval_y, baseline=baseline, options=options)
    except RuntimeFault as e:
        raise ToolInputError(f"{model_path}: the model failed to run: {e}") from e
    p99, sample = measured.p99_ms, measured.sample
    budget = options.latency_budget_ms or max(options.min_latency_budget_ms,
                                              math.ceil(p99 * options.latency_factor))
    files = {"reference": reference, "eval": eval_x, "labels": eval_y}
    lineage = _lineage(files, parent, training_run, federated_round, agent_version())
    try:
        manifest = _write(model_path, dest, name=name, version=version, sample=sample,
                          budget=float(budget), metrics=measured.metrics, lineage=lineage,
                          profile=measured.profile, preprocessing=preprocessing,
                          signature=runner.signature)
    except BundleError as e:
        raise ToolInputError(f"cannot build the bundle: {e}") from e
    log.info("built %s (%d bytes)", dest, dest.stat().st_size)
    return BuildReport(
        path=dest, manifest=manifest, bundle_sha256=file_sha256(dest),
        bundle_size=dest.stat().st_size, p99_ms=p99, quantized=measured.quantized,
        reference_rows=measured.reference_rows, eval_samples=measured.eval_samples,
        notes=measured.notes,
    )


@dataclass(frozen=True)
class _Measured:
    quantized: bool
    profile: dict[str, Any] | None
    metrics: dict[str, float]
    sample: dict[str, np.ndarray]
    p99_ms: float
    reference_rows: int | None
    eval_samples: int | None
    notes: tuple[str, ...]


def _measure(runner: Any, model_path: Path, *, reference: str | os.PathLike[str] | None,
             eval_x: str | os.PathLike[str] | None, eval_y: str | os.PathLike[str] | None,
             baseline: str | os.PathLike[str] | None, options: ReleaseOptions) -> _Measured:
    """Everything the manifest needs that comes from running the model."""
    sig = runner.signature
    notes: list[str] = []
    quantized = _is_quantized(model_path)
    ref = _inputs(reference, sig, "reference") if reference is not None else None
    ev = _inputs(eval_x, sig, "evaluation") if eval_x is not None else None
    labels = _labels(Path(eval_y), ev) if eval_y is not None and ev is not None else None
    ref_out = _predict(runner, ref, "reference") if ref is not None else None
    profile = None
    if ref is not None and ref_out is not None:
        profile = _profile(ref, ref_out, options.bins)
    else:
        notes.append("no reference data: the bundle has no drift profile")
    data, outputs = (ev, _predict(runner, ev, "evaluation")) if ev is not None else (
        ref, ref_out)
    metrics = _metrics(data, outputs, labels)
    if baseline is not None and data is not None and outputs is not None:
        metrics.update(_baseline_metrics(Path(baseline), data, outputs, labels))
        if not quantized:
            notes.append("the model is not quantized; the change against the baseline was "
                         "measured all the same")
    sample = _sample(sig, ref if ref is not None else ev, options)
    return _Measured(
        quantized=quantized, profile=profile, metrics=metrics, sample=sample,
        p99_ms=_p99_ms(runner, sample), reference_rows=None if ref is None else _rows(ref),
        eval_samples=None if ev is None else _rows(ev), notes=tuple(notes),
    )


# -- files --------------------------------------------------------------------------------


def _destination(out: Path, name: str, version: str, overwrite: bool) -> Path:
    filename = bundle_filename(name, version)
    if out.suffix == BUNDLE_SUFFIX and not out.is_dir():
        if out.name != filename:
            raise ToolInputError(f"the bundle must be named {filename} (got {out.name}); "
                                 "pass a directory or that file name")
        dest = out
    else:
        dest = out / filename
    if not dest.parent.is_dir():
        raise ToolInputError(f"{dest.parent}: no such output directory")
    if dest.exists() and not overwrite:
        raise ToolInputError(f"{dest} exists already (bundles are immutable; pass --force "
                             "to replace the file)")
    return dest


def _write(model: Path, dest: Path, *, name: str, version: str,
           sample: Mapping[str, np.ndarray], budget: float, metrics: Mapping[str, float],
           lineage: Mapping[str, str | None], profile: Mapping[str, Any] | None,
           preprocessing: Mapping[str, Any] | None, signature: Any) -> Any:
    from edgefleet.agent.update.bundle import (
        MAX_MANIFEST_BYTES,
        make_manifest,
        read_manifest,
        write_bundle,
    )

    manifest = make_manifest(
        model, name=name, version=version, sample_input=sample, latency_budget_ms=budget,
        metrics=metrics, lineage=lineage, reference_profile=profile,
        preprocessing=preprocessing, signature=signature,
    )
    size = len(manifest.to_json())
    if size > MAX_MANIFEST_BYTES:
        values = sum(math.prod(a.shape) for a in sample.values())
        raise ToolInputError(f"the manifest would be {size} bytes, over the agent's cap of "
                             f"{MAX_MANIFEST_BYTES}: the sample input holds {values} values "
                             "(the model's inputs are too large to ship a sample)")
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        write_bundle(tmp, model, manifest)
        read_manifest(tmp)  # the agent's own reader must accept what we ship
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def _lineage(files: Mapping[str, str | os.PathLike[str] | None], parent: str | None,
             training_run: str | None, federated_round: str | None,
             code_version: str) -> dict[str, str | None]:
    """Per-file sha256 and ``data_digest``: the file's sha256 when one data file was
    given, else the sha256 of the lines ``"<role>=<sha256>\\n"`` in role order."""
    from edgefleet.agent.update.bundle import file_sha256

    digests = {role: file_sha256(Path(p)) for role, p in files.items() if p is not None}
    if len(digests) == 1:
        data_digest: str | None = next(iter(digests.values()))
    elif digests:
        text = "".join(f"{role}={d}\n" for role, d in digests.items())
        data_digest = hashlib.sha256(text.encode()).hexdigest()
    else:
        data_digest = None
    lineage: dict[str, str | None] = {
        "parent_version": parent, "data_digest": data_digest, "training_run": training_run,
        "federated_round": federated_round, "code_version": code_version,
    }
    lineage.update({f"{role}_sha256": d for role, d in digests.items()})
    return lineage


# -- data ---------------------------------------------------------------------------------


def _inputs(path: str | os.PathLike[str], signature: Any, what: str) -> dict[str, np.ndarray]:
    from edgefleet.tools.evaluation import as_inputs

    arrays = as_inputs(Path(path), signature.input_names, what)
    for spec in signature.inputs:
        got = arrays[spec.name].shape
        if len(got) != spec.rank or any(isinstance(d, int) and d != g and axis > 0
                                        for axis, (d, g) in enumerate(zip(spec.shape, got,
                                                                          strict=False))):
            raise ToolInputError(f"{what} data for input {spec.name!r} has shape {got}; the "
                                 f"model takes {list(spec.shape)}")
    return arrays


def _rows(arrays: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(arrays.values())).shape[0])


def _predict(runner: Any, inputs: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    from edgefleet.tools.evaluation import predict_all

    try:
        return predict_all(runner, inputs)
    except ToolInputError as e:
        raise ToolInputError(f"{what} data: {e}") from e


def _columns(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Flatten each tensor per sample (C order) into one float64 matrix with names."""
    parts, names = [], []
    for tensor, array in arrays.items():
        flat = np.asarray(array).reshape(array.shape[0], -1).astype(np.float64)
        parts.append(flat)
        if flat.shape[1] == 1:
            names.append(tensor)
        else:
            names += [f"{tensor}[{i}]" for i in range(flat.shape[1])]
    return np.concatenate(parts, axis=1), names


def _profile(ref: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
             bins: int) -> dict[str, Any]:
    from edgefleet.agent.drift import DriftError, ReferenceProfile

    x, x_names = _columns(ref)
    y, y_names = _columns(outputs)
    if len(x_names) + len(y_names) > MAX_PROFILE_COLUMNS:
        raise ToolInputError(
            f"the reference profile would have {len(x_names)} input and {len(y_names)} output "
            f"columns, over {MAX_PROFILE_COLUMNS}: image-sized inputs are not profiled value "
            "by value; give reference data only for models with tabular (2-D) inputs")
    try:
        return ReferenceProfile.build(x, x_names, y, y_names, bins=bins).to_dict()
    except DriftError as e:
        raise ToolInputError(f"cannot profile the reference data: {e}") from e


def _labels(path: Path, ev: Mapping[str, np.ndarray]) -> np.ndarray:
    from edgefleet.tools.evaluation import load_labels

    return load_labels(path, ev)


def _metrics(data: Mapping[str, np.ndarray] | None, outputs: Mapping[str, np.ndarray] | None,
             labels: np.ndarray | None) -> dict[str, float]:
    """``accuracy`` with labels, else the mean and std of every output."""
    from edgefleet.tools.evaluation import accuracy, class_output

    if data is None or outputs is None:
        return {}
    metrics: dict[str, float] = {"eval_samples": float(_rows(data))}
    if labels is not None:
        metrics["accuracy"] = accuracy(outputs[class_output(outputs)], labels)
        return metrics
    for name, value in outputs.items():
        arr = np.asarray(value, dtype=np.float64)
        metrics[f"{name}.mean"] = float(arr.mean())
        metrics[f"{name}.std"] = float(arr.std())
    return metrics


def _baseline_metrics(baseline: Path, data: Mapping[str, np.ndarray],
                      outputs: Mapping[str, np.ndarray],
                      labels: np.ndarray | None) -> dict[str, float]:
    """The measured change against the float ``baseline`` on the same data: accuracy
    points with labels, and the largest absolute difference of every float output."""
    from edgefleet.agent.runtime import load_model
    from edgefleet.agent.runtime.errors import ModelLoadError
    from edgefleet.tools.evaluation import accuracy, class_output
    from edgefleet.tools.quantize import compare_outputs

    if not baseline.is_file():
        raise ToolInputError(f"{baseline}: no such baseline model file")
    try:
        with load_model(baseline) as base:
            base_out = _predict(base, data, "baseline")
    except ModelLoadError as e:
        raise ToolInputError(f"baseline: {e}") from e
    metrics: dict[str, float] = {}
    if labels is not None:
        release_acc = accuracy(outputs[class_output(outputs)], labels)
        base_acc = accuracy(base_out[class_output(base_out)], labels)
        metrics["baseline_accuracy"] = base_acc
        metrics["accuracy_change_points"] = (release_acc - base_acc) * 100.0
    for err in compare_outputs(base_out, outputs):
        metrics[f"{err.name}.max_abs_error"] = err.max_abs
    return metrics


def _sample(signature: Any, data: Mapping[str, np.ndarray] | None,
            options: ReleaseOptions) -> dict[str, np.ndarray]:
    from edgefleet.tools.bench import random_inputs

    first = signature.inputs[0].shape
    fixed = first[0] if first and isinstance(first[0], int) else None
    if data is None:
        return random_inputs(signature, batch=fixed or 1, seed=options.seed)
    per_row = sum(math.prod(a.shape[1:]) for a in data.values()) or 1
    rows = fixed or max(1, min(options.sample_rows, MAX_SAMPLE_VALUES // per_row))
    rows = min(rows, _rows(data))
    if fixed is not None and rows < fixed:
        return random_inputs(signature, batch=fixed, seed=options.seed)
    return {k: np.ascontiguousarray(v[:rows]) for k, v in data.items()}


def _p99_ms(runner: Any, sample: Mapping[str, np.ndarray]) -> float:
    runner.predict(sample)  # first run: allocation and lazy initialisation, not timed
    times: list[float] = []
    deadline = time.perf_counter() + _TIMING_CAP_S
    while len(times) < _TIMED_RUNS and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        runner.predict(sample)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.percentile(times, 99))


def _is_quantized(path: Path) -> bool:
    from edgefleet.agent.runtime.errors import RuntimeFault
    from edgefleet.tools.inspect_model import inspect_model

    try:
        return bool(inspect_model(path).quantized)
    except (RuntimeFault, ValueError, OSError):  # informative only; loading already worked
        log.debug("could not inspect %s for quantization", path, exc_info=True)
        return False
