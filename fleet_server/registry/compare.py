"""Compare two model versions: metrics deltas, size, signature compatibility. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _dims_compatible(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Same rank and every dimension equal or dynamic (None / symbolic) on either side."""
    if len(a) != len(b):
        return False
    return all(
        x == y or x is None or y is None or isinstance(x, str) or isinstance(y, str)
        for x, y in zip(a, b, strict=True)
    )


def _compare_tensors(
    kind: str, a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
) -> list[str]:
    problems: list[str] = []
    by_name_a = {t["name"]: t for t in a}
    by_name_b = {t["name"]: t for t in b}
    for name in sorted(by_name_a.keys() - by_name_b.keys()):
        problems.append(f"{kind} {name!r} missing in b")
    for name in sorted(by_name_b.keys() - by_name_a.keys()):
        problems.append(f"{kind} {name!r} only in b")
    for name in sorted(by_name_a.keys() & by_name_b.keys()):
        ta, tb = by_name_a[name], by_name_b[name]
        if ta["dtype"] != tb["dtype"]:
            problems.append(f"{kind} {name!r} dtype {ta['dtype']} != {tb['dtype']}")
        if not _dims_compatible(ta["shape"], tb["shape"]):
            problems.append(f"{kind} {name!r} shape {ta['shape']} incompatible with {tb['shape']}")
    return problems


def signature_compatibility(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Whether ``b`` can replace ``a`` for callers: same tensor names, dtypes, shapes."""
    problems = _compare_tensors("input", a.get("inputs", []), b.get("inputs", []))
    problems += _compare_tensors("output", a.get("outputs", []), b.get("outputs", []))
    return {"compatible": not problems, "problems": problems}


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def metric_deltas(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per metric: value in a, value in b, and b - a where both are numbers."""
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key), b.get(key)
        delta = vb - va if _is_number(va) and _is_number(vb) else None  # type: ignore[operator]
        out[key] = {"a": va, "b": vb, "delta": delta}
    return out


def compare_versions(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Compare two version records (as returned by the registry service)."""
    size_a, size_b = int(a["size_bytes"]), int(b["size_bytes"])
    return {
        "a": {"model": a["model"], "version": a["version"], "digest": a["digest"]},
        "b": {"model": b["model"], "version": b["version"], "digest": b["digest"]},
        "same_artifact": a["digest"] == b["digest"],
        "framework": {"a": a["framework"], "b": b["framework"]},
        "quantization": {"a": a["quantization"], "b": b["quantization"]},
        "size_bytes": {
            "a": size_a,
            "b": size_b,
            "delta": size_b - size_a,
            "ratio": round(size_b / size_a, 6) if size_a else None,
        },
        "metrics": metric_deltas(a.get("metrics") or {}, b.get("metrics") or {}),
        "signature": signature_compatibility(a["signature"], b["signature"]),
    }
