"""Evaluating a model on data: shared by ``model quantize`` and ``release build``.

Normalises evaluation data (a path, an array or a name -> array mapping) to the model's
inputs, runs it through a runner in batches, and scores class predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tools.arrays import load_array, load_arrays
from edgefleet.tools.errors import ToolInputError

EVAL_BATCH = 256  # samples per predict call when the model's batch dimension is dynamic


def as_inputs(
    data: str | Path | np.ndarray | Mapping[str, np.ndarray],
    input_names: tuple[str, ...],
    what: str,
) -> dict[str, np.ndarray]:
    """Normalise a path / array / mapping into name -> array with one sample count."""
    loaded: np.ndarray | Mapping[str, np.ndarray]
    loaded = load_arrays(data) if isinstance(data, str | Path) else data
    if isinstance(loaded, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in loaded.items()}
        unknown = sorted(set(arrays) - set(input_names))
        missing = sorted(set(input_names) - set(arrays))
        if unknown or missing:
            raise ToolInputError(
                f"{what} data names {sorted(arrays)} do not match the model inputs "
                f"{list(input_names)}"
            )
    else:
        if len(input_names) != 1:
            raise ToolInputError(
                f"the model has {len(input_names)} inputs {list(input_names)}: give {what} "
                "data as an .npz archive with one array per input"
            )
        arrays = {input_names[0]: np.asarray(loaded)}
    counts = {name: (a.shape[0] if a.ndim else 0) for name, a in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ToolInputError(f"{what} data needs the same, non-zero number of samples "
                             f"in every input; got {counts}")
    return arrays


def load_labels(
    eval_y: str | Path | np.ndarray, x_eval: Mapping[str, np.ndarray] | None
) -> np.ndarray:
    """Class ids [N] from ids or one-hot rows, one per evaluation sample.

    Raises:
        ToolInputError: not class ids, not one-hot, or a count that differs from x_eval.
    """
    y = load_array(eval_y) if isinstance(eval_y, str | Path) else np.asarray(eval_y)
    if y.ndim == 2:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise ToolInputError(f"2-D labels must be one-hot rows; got shape {y.shape} "
                                 "with other values")
        y = y.argmax(axis=1)
    if y.ndim != 1 or y.dtype.kind not in "iub":
        raise ToolInputError(f"labels must be integer class ids [N] or one-hot [N, C]; "
                             f"got dtype {y.dtype} shape {y.shape}")
    n = len(next(iter(x_eval.values()))) if x_eval else 0
    if len(y) != n:
        raise ToolInputError(f"{len(y)} labels for {n} evaluation samples")
    return y.astype(np.int64)


def predict_all(runner: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every sample through ``runner`` in batches (one at a time for fixed batch)."""
    from edgefleet.agent.runtime.errors import InputError

    first = runner.signature.inputs[0].shape
    step = first[0] if first and isinstance(first[0], int) else EVAL_BATCH
    n = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, n, step):
            out = runner.predict({k: v[start:start + step] for k, v in inputs.items()})
            for name, value in out.items():
                parts.setdefault(name, []).append(np.asarray(value))
    except InputError as exc:
        raise ToolInputError(f"evaluation data does not fit the model: {exc}") from exc
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def class_output(outputs: Mapping[str, np.ndarray]) -> str:
    """The output to take class predictions from: a float [N, C] score tensor, else
    an integer [N] label tensor.

    Raises:
        ToolInputError: no output looks like class scores or labels.
    """
    scores = [n for n, v in outputs.items() if v.dtype.kind == "f" and v.ndim == 2]
    if scores:
        preferred = [n for n in scores if "prob" in n.lower()]
        return (preferred or scores)[0]
    labels = [n for n, v in outputs.items() if v.dtype.kind in "iu" and v.ndim == 1]
    if labels:
        return labels[0]
    raise ToolInputError(
        "labels given but no model output holds class scores [N, C] or labels [N]; "
        "omit --labels to compare outputs only"
    )


def accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    predicted = output.argmax(axis=1) if output.ndim == 2 else output
    return float(np.mean(predicted.astype(np.int64) == labels))
