"""The writer without MQTT: presence ordering, retention, acks after commit, rate limits."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from edgefleet.agent.telemetry.envelope import Channel, topic
from edgefleet.fleet_server.ingest import IngestConfig, jobs
from edgefleet.fleet_server.ingest.service import device_telemetry, ingest_stats
from edgefleet.fleet_server.ingest.writer import Ingester, RateLimitedLog
from tests.fleet_server.ingest.support import MODEL, envelope, lookup_for, reference_profile
from tests.fleet_server.support import Env

DEV = "dev-w"


@pytest.fixture
def ingester(env: Env) -> Iterator[Ingester]:
    ing = Ingester(env.services.store, lookup_for(reference_profile()),
                   config=IngestConfig(predictions_keep_per_device=5)).start()
    yield ing
    ing.stop()


def feed(ing: Ingester, messages: list[tuple[Channel, dict[str, Any], int, int]],
         acks: list[int] | None = None) -> None:
    for channel, body, bd, seq in messages:
        ack = (lambda s=seq: acks.append(s)) if acks is not None else None
        assert ing.submit(topic(DEV, channel), envelope(channel, DEV, body, bd=bd, seq=seq),
                          ack)
    assert ing.wait_idle(10)


def state(env: Env) -> str | None:
    result = device_telemetry(env.services.store, DEV)
    assert result is not None
    return result["presence"]["state"]


def test_presence_follows_connections(env: Env, ingester: Ingester) -> None:
    online, offline = {"state": "online"}, {"state": "offline"}
    # connection 1: will (offline) built first with seq 1, online sent with seq 3
    feed(ingester, [(Channel.STATUS, online, 1, 3)])
    assert state(env) == "online"
    feed(ingester, [(Channel.STATUS, offline, 1, 1)])
    assert state(env) == "offline"
    # a late online of the same connection does not revive it; a new connection does
    feed(ingester, [(Channel.STATUS, online, 1, 4)])
    assert state(env) == "offline"
    feed(ingester, [(Channel.STATUS, online, 2, 6)])
    assert state(env) == "online"


def test_prediction_samples_are_bounded_and_acked_after_commit(
        env: Env, ingester: Ingester) -> None:
    acks: list[int] = []
    feed(ingester, [(Channel.PREDICTIONS, {"model": MODEL, "records": [{"i": s}, {"i": -s}]},
                     1, s) for s in range(1, 6)], acks)
    assert sorted(acks) == [1, 2, 3, 4, 5]
    rows = list(env.services.store.db["ingest_predictions"].rows_where(
        "device_id = ?", [DEV], order_by="id"))
    assert len(rows) == 5 and rows[-1]["seq"] == 5
    stats = ingest_stats(env.services.store)
    assert stats["accepted"] == 5 and stats["running"] is False


def test_retention_job_runs(env: Env, ingester: Ingester) -> None:
    feed(ingester, [(Channel.EVENTS, {"events": [{"kind": "state", "ts": 1.0}]}, 1, 1)])
    (name, interval, fn), = jobs(env.services)
    assert name == "ingest.retention" and interval > 0
    fn()
    assert env.services.store.db["ingest_events"].count == 1


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("t"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        assert rl.warning("a", "first")
        assert not rl.warning("a", "again")
        assert rl.warning("b", "other key")
        now[0] = 11.0
        assert rl.warning("a", "later")
    assert [r.getMessage() for r in caplog.records] == [
        "first", "other key", "later (1 similar suppressed)"]



def test_a_new_writer_continues_from_the_stored_state(env: Env) -> None:
    """Presence ordering and dedup state are cached in memory by the writer; a new writer
    on the same database loads them (in bulk) and applies the same rules."""
    online, offline = {"state": "online"}, {"state": "offline"}
    first = Ingester(env.services.store, lookup_for(reference_profile())).start()
    feed(first, [(Channel.STATUS, online, 2, 10), (Channel.HEARTBEAT, {"uptime_s": 5.0}, 2, 11)])
    first.stop()
    second = Ingester(env.services.store, lookup_for(reference_profile())).start()
    try:
        # an older connection's offline, a re-sent message and a new one
        feed(second, [(Channel.STATUS, offline, 1, 3),
                      (Channel.HEARTBEAT, {"uptime_s": 5.0}, 2, 11),
                      (Channel.HEARTBEAT, {"uptime_s": 9.0}, 2, 12)])
        assert state(env) == "online"
        result = device_telemetry(env.services.store, DEV)
        assert result is not None
        assert result["heartbeat"]["body"] == {"uptime_s": 9.0}
        assert result["sequence"]["duplicates"] == 1 and result["sequence"]["max_seq"] == 12
        assert second.accepted == 2  # in memory: this writer's committed, accepted messages
        stats = ingest_stats(env.services.store)
        assert stats["accepted"] == 4 and stats["duplicates"] == 1
    finally:
        second.stop()


def test_a_full_queue_drops_and_counts(env: Env) -> None:
    ing = Ingester(env.services.store, lookup_for(reference_profile()),
                   config=IngestConfig(queue_size=2))  # not started: nothing is taken
    body = envelope(Channel.STATUS, DEV, {"state": "online"}, bd=1, seq=1)
    assert ing.submit(topic(DEV, Channel.STATUS), body)
    assert ing.submit(topic(DEV, Channel.STATUS), body)
    assert not ing.submit(topic(DEV, Channel.STATUS), body)  # after waiting a second
    assert ing.live_counters() == {"dropped_queue_full": 1}
    assert ing.queue_depth == 2
