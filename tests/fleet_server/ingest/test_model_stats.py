"""Per-version heartbeat statistics (``ingest_model_stats``) and update events over MQTT
forwarded to the updates component, through the real writer and a real SQLite store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.telemetry.envelope import Channel, topic
from edgefleet.fleet_server.ingest import COMPONENT as INGEST
from edgefleet.fleet_server.ingest.writer import Ingester
from edgefleet.fleet_server.storage import Store
from edgefleet.fleet_server.updates import COMPONENT as UPDATES
from edgefleet.fleet_server.updates.events import UpdateEvents
from tests.fleet_server.ingest.support import envelope, lookup_for, reference_profile

DEV = "dev-stats"


def _open(path: Path, *, with_updates: bool) -> Store:
    store = Store.open(path)
    store.migrate([INGEST, UPDATES] if with_updates else [INGEST])
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = _open(tmp_path / "db.sqlite", with_updates=True)
    yield s
    s.close()


def _ingester(store: Store) -> Ingester:
    return Ingester(store, lookup_for(reference_profile())).start()


def feed(store: Store, messages: list[tuple[Channel, dict[str, Any], int, float]]) -> None:
    """(channel, body, seq, envelope ts) through a fresh writer, in one go."""
    ing = _ingester(store)
    try:
        for channel, body, seq, ts in messages:
            assert ing.submit(topic(DEV, channel), envelope(channel, DEV, body, seq=seq, ts=ts))
        assert ing.wait_idle(10)
    finally:
        ing.stop()


def heartbeat(version: str | None, predictions: int, p95: float, **extra: Any
              ) -> dict[str, Any]:
    entry: dict[str, Any] = {"predictions": predictions, "errors": 0, "sampled": 1,
                             "latency_ms": {"p50": p95 / 2, "p95": p95}, **extra}
    if version is not None:
        entry["version"] = version
    return {"uptime_s": 10.0, "models": {"digits": entry}}


def rows(store: Store) -> dict[str, dict[str, Any]]:
    return {r["version"]: r for r in store.db["ingest_model_stats"].rows}


def counter(store: Store, name: str) -> int:
    found = list(store.db["ingest_counters"].rows_where("name = ?", [name]))
    return int(found[0]["value"]) if found else 0


def test_versioned_heartbeats_upsert_per_version_and_keep_old_rows(store: Store) -> None:
    now = time.time()
    shadow = {"version": "1.1.0", "compared": 50, "agreed": 45,
              "latency_ms": {"p50": 1.0, "p95": 3.5}}
    feed(store, [
        (Channel.HEARTBEAT, heartbeat("1.0.0", 10, 2.0, feedback={"labeled": 4, "correct": 3},
                                      shadow=shadow), 1, now),
        (Channel.HEARTBEAT, heartbeat("1.0.0", 20, 2.5), 2, now + 1),
    ])
    old = rows(store)["1.0.0"]
    # the newer heartbeat of the batch wins; its missing optional keys are stored as NULL
    assert (old["predictions"], old["p50_ms"], old["p95_ms"]) == (20, 1.25, 2.5)
    assert old["labeled"] is None and old["shadow_version"] is None
    assert old["ts"] == pytest.approx(now + 1, abs=1e-3)
    assert old["model"] == "digits" and old["device_id"] == DEV

    feed(store, [(Channel.HEARTBEAT, heartbeat("1.0.0", 30, 2.2, feedback={
        "labeled": 4, "correct": 3}, shadow=shadow), 3, now + 2)])
    old = rows(store)["1.0.0"]
    assert (old["predictions"], old["labeled"], old["correct"]) == (30, 4, 3)
    assert (old["shadow_version"], old["shadow_compared"], old["shadow_agreed"],
            old["shadow_p95_ms"]) == ("1.1.0", 50, 45, 3.5)

    # the device switched: a row for the new version, the old version's row stays
    feed(store, [(Channel.HEARTBEAT, heartbeat("1.1.0", 5, 4.0), 4, now + 3)])
    assert set(rows(store)) == {"1.0.0", "1.1.0"}
    assert rows(store)["1.0.0"]["predictions"] == 30

    # an outbox replay of an older heartbeat does not overwrite newer counters
    feed(store, [(Channel.HEARTBEAT, heartbeat("1.1.0", 1, 9.0), 0, now + 2.5)])
    assert rows(store)["1.1.0"]["predictions"] == 5


def test_heartbeat_without_version_keeps_only_the_latency_table(store: Store) -> None:
    feed(store, [(Channel.HEARTBEAT, heartbeat(None, 7, 1.0), 1, time.time())])
    assert rows(store) == {}
    latency = list(store.db["ingest_latency"].rows)
    assert [(r["model"], r["predictions"], r["p95_ms"]) for r in latency] == [("digits", 7, 1.0)]


@pytest.mark.parametrize("extra", [
    {"version": 3},
    {"version": ""},
    {"feedback": {"labeled": 3, "correct": 4}},
    {"feedback": {"labeled": -1}},
    {"feedback": []},
    {"shadow": {"compared": 4, "agreed": 1}},
    {"shadow": {"version": "1.1.0", "compared": 4, "agreed": 5}},
    {"shadow": {"version": "1.1.0", "latency_ms": {"p95": -2}}},
    {"errors": 1.5},
])
def test_bad_model_entries_reject_the_heartbeat(store: Store, extra: dict[str, Any]) -> None:
    body = heartbeat(None, 1, 1.0)
    body["models"]["digits"].update(extra)
    feed(store, [(Channel.HEARTBEAT, body, 1, time.time())])
    assert counter(store, "rejected.body") == 1
    assert rows(store) == {} and list(store.db["ingest_latency"].rows) == []


def _update_event(ts: float, frm: str, to: str, bundle: str | None = "digits-1.1.0.tar",
                  kind: str = "state", error: str | None = None) -> dict[str, Any]:
    return {"ts": ts, "kind": kind, "state": to, "from": frm, "to": to, "bundle": bundle,
            "error": error}


def test_update_events_reach_the_update_status_once(store: Store) -> None:
    now = time.time()
    events = {"events": [
        _update_event(now + 1, "downloading", "verifying"),
        _update_event(now, "checking", "downloading"),  # out of order within the message
        {"ts": now, "kind": "log", "message": "not an update event"},
        {"ts": now, "kind": "state", "state": "idle", "extra": 1},  # does not fit the schema
    ]}
    feed(store, [(Channel.EVENTS, events, 1, now),
                 (Channel.EVENTS, {"events": [_update_event(now + 2, "switching", "committed")]},
                  2, now + 2)])
    status = UpdateEvents(store).status(DEV)
    assert status is not None
    assert (status["state"], status["bundle"], status["events_total"]) == (
        "committed", "digits-1.1.0.tar", 3)
    forwarded, total = UpdateEvents(store).list_events(DEV)
    assert total == 3
    assert [e["to"] for e in forwarded] == ["committed", "verifying", "downloading"]
    # everything, fitting or not, is still kept by ingestion
    assert store.db["ingest_events"].count == 5

    # a re-delivery of an already stored message is a duplicate: not recorded again
    feed(store, [(Channel.EVENTS, events, 1, now)])
    status = UpdateEvents(store).status(DEV)
    assert status is not None and status["events_total"] == 3
    assert store.db["ingest_events"].count == 5
    assert counter(store, "duplicates") == 1

    # an error event in the HTTP form counts as an error
    feed(store, [(Channel.EVENTS, {"events": [_update_event(
        now + 3, "rolling_back", "rolling_back", kind="error", error="boom")]}, 3, now + 3)])
    status = UpdateEvents(store).status(DEV)
    assert status is not None
    assert (status["errors_total"], status["last_error"]) == (1, "boom")


def test_events_without_the_updates_component_are_only_ingested(tmp_path: Path) -> None:
    store = _open(tmp_path / "bare.sqlite", with_updates=False)
    try:
        feed(store, [(Channel.EVENTS, {"events": [_update_event(time.time(), "idle",
                                                                "checking")]},
                      1, time.time())])
        assert store.db["ingest_events"].count == 1
        assert counter(store, "write_failed") == 0
        assert "device_update_status" not in store.db.table_names()
    finally:
        store.close()


def test_a_failing_update_event_store_does_not_cost_the_batch(store: Store) -> None:
    # fault: record() fails after inserting the events, when it updates the status
    store.db.execute("CREATE TRIGGER fail_status BEFORE INSERT ON device_update_status"
                     " BEGIN SELECT RAISE(ABORT, 'injected'); END")
    now = time.time()
    feed(store, [(Channel.EVENTS, {"events": [_update_event(now, "idle", "checking")]},
                  1, now),
                 (Channel.HEARTBEAT, heartbeat("1.0.0", 3, 1.0), 2, now)])
    assert counter(store, "write_failed") == 0
    assert store.db["ingest_events"].count == 1
    assert set(rows(store)) == {"1.0.0"}
    # the half-done record() was rolled back to the savepoint
    assert store.db["device_update_events"].count == 0
    assert store.db["device_update_status"].count == 0
