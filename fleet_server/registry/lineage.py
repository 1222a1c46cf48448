"""Build the lineage graph of a model version. Pure: records in, graph out.

Nodes are versions plus the things they came from (data digest, training run,
federated round, code version); edges point from origin to derived version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: lineage field -> (node kind, edge relation)
_ORIGINS = {
    "data_digest": ("data", "trained_on"),
    "training_run": ("training_run", "produced_by"),
    "federated_round": ("federated_round", "produced_by"),
    "code_version": ("code", "built_from"),
}


def version_node_id(model: str, version: str) -> str:
    """Stable node id of a version in the graph."""
    return f"version:{model}@{version}"


def lineage_graph(
    focus_id: int, versions: Sequence[Mapping[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Graph of ``focus_id``'s ancestors and descendants.

    ``versions`` are version records with ``id``, ``model``, ``version``, ``stage``,
    ``parent_id`` and ``lineage`` (a dict); they may include unrelated versions, which
    are left out. Returns ``{"nodes": [...], "edges": [...]}``.
    """
    by_id = {int(v["id"]): v for v in versions}
    children: dict[int, list[int]] = {}
    for v in versions:
        if v.get("parent_id") is not None:
            children.setdefault(int(v["parent_id"]), []).append(int(v["id"]))

    related: set[int] = set()
    cur: int | None = focus_id
    while cur is not None and cur in by_id and cur not in related:  # ancestors
        related.add(cur)
        parent = by_id[cur].get("parent_id")
        cur = int(parent) if parent is not None else None
    stack = [focus_id]
    while stack:  # descendants
        for child in children.get(stack.pop(), []):
            if child not in related:
                related.add(child)
                stack.append(child)

    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []
    for vid in sorted(related):
        v = by_id[vid]
        node_id = version_node_id(v["model"], v["version"])
        nodes[node_id] = {
            "id": node_id,
            "kind": "version",
            "model": v["model"],
            "version": v["version"],
            "stage": v["stage"],
            "focus": vid == focus_id,
        }
        parent = v.get("parent_id")
        if parent is not None and int(parent) in by_id:
            p = by_id[int(parent)]
            edges.append(
                {
                    "from": version_node_id(p["model"], p["version"]),
                    "to": node_id,
                    "relation": "parent_of",
                }
            )
        lineage = v.get("lineage") or {}
        for field, (kind, relation) in _ORIGINS.items():
            value = lineage.get(field)
            if value in (None, ""):
                continue
            origin = f"{kind}:{value}"
            nodes.setdefault(origin, {"id": origin, "kind": kind, "value": value})
            edges.append({"from": origin, "to": node_id, "relation": relation})
    return {"nodes": list(nodes.values()), "edges": edges}
