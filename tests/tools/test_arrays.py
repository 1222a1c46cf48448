"""Reading .npy / .npz / .json array files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.tools.arrays import load_array, load_arrays, parse_json_arrays
from edgefleet.tools.errors import ToolInputError


def test_npy_npz_json(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", x=a, y=a[:, 0])
    (tmp_path / "c.json").write_text('{"x": [[1, 2.5]], "ids": [[1, 2]]}')
    np.testing.assert_array_equal(load_arrays(tmp_path / "a.npy"), a)
    both = load_arrays(tmp_path / "b.npz")
    assert isinstance(both, dict) and sorted(both) == ["x", "y"]
    from_json = load_arrays(tmp_path / "c.json")
    assert isinstance(from_json, dict)
    assert from_json["x"].dtype == np.float64 and from_json["ids"].dtype == np.int64
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy"), a)
    with pytest.raises(ToolInputError, match="expected one array"):
        load_array(tmp_path / "b.npz")


def test_bare_json_list_is_one_array() -> None:
    array = parse_json_arrays("[[1, 2], [3, 4]]")
    assert isinstance(array, np.ndarray) and array.shape == (2, 2)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("{", "invalid JSON"), ("3", "expected a JSON object"), ("{}", "holds no inputs"),
     ('{"x": [[1], [1, 2]]}', "unequal lengths"), ('{"x": "abc"}', "expected numbers"),
     ('{"x": [null]}', "expected numbers"), ('{"x": true}', "expected numbers")],
)
def test_bad_json(text: str, fragment: str) -> None:
    with pytest.raises(ToolInputError, match=fragment):
        parse_json_arrays(text)


def test_pickles_and_missing_files_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ToolInputError, match="not a readable"):
        load_arrays(tmp_path / "obj.npy")
    with pytest.raises(ToolInputError, match="no such file"):
        load_arrays(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ToolInputError):
        load_arrays(tmp_path / "bad.json")
