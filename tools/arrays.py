"""Reading the array files the model tools take (``.npy``, ``.npz``, ``.json``).

Shared by quantize (calibration and evaluation data) and the CLI. Pickled object arrays
are refused: a data file must never be able to run code. JSON holds an object mapping
names to (nested) lists of numbers, or a bare (nested) list for a single array.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tools.errors import ToolInputError

ArrayOrMapping = np.ndarray | dict[str, np.ndarray]


def load_arrays(path: str | Path) -> ArrayOrMapping:
    """Load ``.npy`` as one array, ``.npz`` or a ``.json`` object as a name → array dict.

    Raises:
        ToolInputError: the file is missing, not a numpy/JSON file, holds pickled
            objects, or its JSON is not numbers in (nested) lists.
    """
    file = Path(path)
    if not file.is_file():
        raise ToolInputError(f"{file}: no such file")
    if file.suffix.lower() == ".json":
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ToolInputError(f"{file}: cannot read it ({e})") from e
        return parse_json_arrays(text, str(file))
    try:
        loaded = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ToolInputError(f"{file}: not a readable .npy/.npz file ({e})") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            try:
                arrays = {name: np.asarray(loaded[name]) for name in loaded.files}
            except (OSError, ValueError, EOFError) as e:
                raise ToolInputError(f"{file}: not a readable .npz file ({e})") from e
        if not arrays:
            raise ToolInputError(f"{file}: the .npz archive holds no arrays")
        return arrays
    return np.asarray(loaded)


def load_array(path: str | Path) -> np.ndarray:
    """Load a file that must hold exactly one array (``.npy``, or ``.npz`` with one entry).

    Raises:
        ToolInputError: as :func:`load_arrays`, or an ``.npz`` with several arrays.
    """
    loaded = load_arrays(path)
    if isinstance(loaded, dict):
        if len(loaded) != 1:
            raise ToolInputError(
                f"{path}: expected one array, the archive holds {sorted(loaded)}"
            )
        return next(iter(loaded.values()))
    return loaded


def parse_json_arrays(text: str, source: str = "JSON input") -> ArrayOrMapping:
    """Parse JSON text: an object name → nested lists, or one nested list.

    Integers stay integers (int64) and anything with a decimal point becomes float64;
    the runtime converts to the model's dtypes where that is safe.

    Raises:
        ToolInputError: invalid JSON, not an object/list, ragged lists, or non-numbers.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolInputError(f"{source}: invalid JSON ({e})") from e
    if isinstance(data, dict):
        if not data:
            raise ToolInputError(f"{source}: the JSON object holds no inputs")
        return {str(k): _json_array(v, f"{source}: input {k!r}") for k, v in data.items()}
    if isinstance(data, list):
        return _json_array(data, source)
    raise ToolInputError(
        f"{source}: expected a JSON object mapping input names to nested lists, "
        f"got {type(data).__name__}"
    )


def _json_array(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, list | int | float) or isinstance(value, bool):
        raise ToolInputError(f"{where}: expected numbers in nested lists, "
                             f"got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged nesting
        raise ToolInputError(f"{where}: nested lists of unequal lengths") from e
    if array.dtype.kind not in "iufb":
        raise ToolInputError(f"{where}: expected numbers in nested lists, "
                             f"got {array.dtype.kind!r} values")
    return array
