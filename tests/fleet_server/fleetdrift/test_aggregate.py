"""Merging device windows per device, group and fleet: exact counts, and the verdicts
the statistics predict for one drifted device among stationary ones."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.agent.drift import SummaryBuilder, compare
from edgefleet.fleet_server.fleetdrift.aggregate import (
    FLEET_ID,
    Scope,
    ScopeKind,
    merge,
    parse_window,
    windows_in_range,
)
from tests.fleet_server.fleetdrift.support import MODEL, VERSION, DriftEnv, rows

EVERYTHING = (0.0, 4e9)


def _fleet(kind: ScopeKind = ScopeKind.FLEET, scope_id: str = FLEET_ID) -> Scope:
    return Scope(MODEL, VERSION, kind, scope_id)


def test_merged_counts_are_exact_sums(env: DriftEnv) -> None:
    devices = [env.enroll() for _ in range(3)]
    stored = [env.store_window(device, env.summary(seed=100 + i, n=300 + 50 * i))
              for i, device in enumerate(devices * 2)]

    found = windows_in_range(env.services.store.db, MODEL, VERSION, ScopeKind.FLEET,
                             FLEET_ID, *EVERYTHING, limit=100)
    summaries = [parse_window(r, lambda _digest: env.reference) for r in found]
    assert len(summaries) == len(stored) and all(s is not None for s in summaries)
    merged = merge([s for s in summaries if s is not None])

    for kind in ("features", "outputs"):
        for j, column in enumerate(getattr(merged, kind)):
            expected = np.sum([w[kind][j]["c"] for w in stored], axis=0)
            assert column.counts.tolist() == expected.tolist()
            assert column.n == sum(w[kind][j]["m"][0] for w in stored)
    assert merged.windows == len(stored)

    body = env.get(f"/api/v1/drift?model={MODEL}&version={VERSION}&scope=fleet"
                   f"&since=0&until=4e9")
    assert body["windows"] == 6 and body["devices"] == 3
    assert body["predictions"] == sum(300 + 50 * i for i in range(6))
    one = env.get(f"/api/v1/drift?model={MODEL}&version={VERSION}&scope=device"
                  f"&id={devices[1]}&since=0&until=4e9")
    assert one["windows"] == 2 and one["predictions"] == 350 + 500  # windows 1 and 4


def test_time_range_selects_windows_by_end(env: DriftEnv) -> None:
    device = env.enroll()
    ends = [env.store_window(device, env.summary(seed=i))["end"] for i in range(4)]
    db = env.services.store.db
    scope = (MODEL, VERSION, ScopeKind.DEVICE, device)
    assert len(windows_in_range(db, *scope, ends[1], ends[3], limit=10)) == 2
    assert len(windows_in_range(db, *scope, 0.0, ends[0], limit=10)) == 0
    assert len(windows_in_range(db, *scope, 0.0, ends[3] + 1, limit=10)) == 4


def _report(env: DriftEnv, kind: str, scope_id: str = "") -> Any:
    return env.get(f"/api/v1/drift?model={MODEL}&version={VERSION}&scope={kind}"
                   f"&id={scope_id}&since=0&until=4e9")


def test_one_drifted_device_among_stationary_ones(env: DriftEnv) -> None:
    """A 0.6 sd shift of f0 on one device: over at device scope; its group of 4 sees a
    0.15 sd mixture shift (over the 0.05 floor); the fleet of 20 sees 0.03 sd (under
    it). Group and fleet PSI equal the central PSI of all their raw rows exactly."""
    env.create_group("line-a")
    env.create_group("line-b")
    line_a = [env.enroll("line-a") for _ in range(4)]
    line_b = [env.enroll("line-b") for _ in range(16)]
    shift = {line_a[0]: 0.6}
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, device in enumerate(line_a + line_b):
        raw[device] = rows(seed=1000 + i, shift=shift.get(device, 0.0))
        builder = SummaryBuilder(env.reference, model_version=VERSION)
        builder.add_batch(*raw[device])
        env.store_window(device, builder.finish(1_700_000_000.0 + i, 1_700_000_060.0 + i))

    drifted = _report(env, "device", line_a[0])
    assert drifted["status"] == "over" and "f0" in drifted["drifted"]
    assert "f1" not in drifted["drifted"]  # the output (score) moves with f0
    for device in (line_a[1], line_b[0]):
        assert _report(env, "device", device)["status"] != "over"

    def central(devices: list[str]) -> dict[str, float]:
        builder = SummaryBuilder(env.reference, model_version=VERSION)
        builder.add_batch(np.vstack([raw[d][0] for d in devices]),
                          np.vstack([raw[d][1] for d in devices]))
        report = compare(env.reference, builder.finish(0.0, 1.0))
        return {c.name: c.psi for c in report.columns} | {"status": report.status.value}

    group = _report(env, "group", "line-a")
    assert group["windows"] == 4 and group["status"] == "over" and "f0" in group["drifted"]
    expected = central(line_a)
    assert {c["name"]: c["psi"] for c in group["columns"]} | {"status": group["status"]} \
        == expected

    fleet = _report(env, "fleet")
    assert fleet["windows"] == 20 and fleet["status"] != "over"
    f0 = next(c for c in fleet["columns"] if c["name"] == "f0")
    assert f0["status"] != "over" and f0["n"] == 20_000
    assert {c["name"]: c["psi"] for c in fleet["columns"]} | {"status": fleet["status"]} \
        == central(line_a + line_b)

    other = _report(env, "group", "line-b")
    assert other["windows"] == 16 and other["status"] != "over"
