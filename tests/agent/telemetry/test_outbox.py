"""The SQLite outbox: order, seq/bd persistence, byte bound with counted eviction."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from edgefleet.agent.telemetry.envelope import ENVELOPE_OVERHEAD_BYTES, Channel
from edgefleet.agent.telemetry.errors import EnvelopeError, OutboxError
from edgefleet.agent.telemetry.outbox import Outbox, OutboxConfig, Synchronous


def _open(path: Path, **kw: int) -> Outbox:
    return Outbox(path / "outbox.sqlite", OutboxConfig(**kw))  # type: ignore[arg-type]


def test_put_peek_ack_in_order(tmp_path: Path) -> None:
    with _open(tmp_path) as box:
        seqs = [box.put(Channel.PREDICTIONS, {"i": i}) for i in range(10)]
        assert seqs == list(range(1, 11))
        recs = box.peek(4)
        assert [r.seq for r in recs] == [1, 2, 3, 4]
        assert [json.loads(r.body_json)["i"] for r in recs] == [0, 1, 2, 3]
        assert [r.seq for r in box.peek(3, after_seq=4)] == [5, 6, 7]
        assert box.ack(2, 1, 99) == 2  # unknown seqs are ignored
        assert [r.seq for r in box.peek(100)] == list(range(3, 11))
        assert box.stats().depth == 8


def test_seq_bd_and_rows_survive_reopen(tmp_path: Path) -> None:
    with _open(tmp_path) as box:
        assert box.bd == 0
        assert box.begin_connection() == 1
        box.put(Channel.EVENTS, {"a": 1})
        box.put(Channel.EVENTS, {"a": 2})
        assert box.reserve_seq() == 3
        box.ack(1, 2)  # every row gone: seq must still not restart
    with _open(tmp_path) as box:
        assert box.bd == 1
        assert box.last_seq == 3
        assert box.begin_connection() == 2
        assert box.put(Channel.DRIFT, {"w": 1}) == 4
        rec = box.peek(10)[0]
        assert (rec.seq, rec.bd, rec.channel) == (4, 2, Channel.DRIFT)
    with _open(tmp_path) as box:
        assert [r.seq for r in box.peek(10)] == [4]
        assert box.stats().depth == 1


def test_wal_and_synchronous_settings(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, OutboxConfig(synchronous=Synchronous.FULL)) as box:
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with Outbox(path) as box:
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_bounded_with_oldest_first_eviction_counted(tmp_path: Path) -> None:
    body = {"pad": "x" * 900}
    row = len(json.dumps(body, separators=(",", ":"))) + ENVELOPE_OVERHEAD_BYTES
    with _open(tmp_path, max_bytes=10 * row, max_payload_bytes=4096) as box:
        for _ in range(10):
            box.put(Channel.PREDICTIONS, body)
        assert box.stats().dropped == 0
        for _ in range(5):
            box.put(Channel.PREDICTIONS, body)
        stats = box.stats()
        assert (stats.depth, stats.dropped) == (10, 5)
        assert stats.bytes <= 10 * row
        assert [r.seq for r in box.peek(100)] == list(range(6, 16))
    with _open(tmp_path, max_bytes=10 * row, max_payload_bytes=4096) as box:
        stats = box.stats()
        assert (stats.depth, stats.dropped, stats.bytes) == (10, 5, 10 * row)
        # a bigger message evicts as many old ones as it needs
        box.put(Channel.PREDICTIONS, {"pad": "y" * 2500})
        assert box.stats().dropped == 8
        assert box.stats().bytes <= 10 * row


def test_rejects_server_channels_and_bad_bodies(tmp_path: Path) -> None:
    with _open(tmp_path, max_payload_bytes=1024, max_bytes=4096) as box:
        for channel in (Channel.DESIRED, Channel.CMD):
            with pytest.raises(EnvelopeError):
                box.put(channel, {})
        with pytest.raises(EnvelopeError):
            box.put(Channel.EVENTS, {"x": "a" * 2000})
        with pytest.raises(EnvelopeError):
            box.put(Channel.EVENTS, {"x": float("inf")})
        assert box.stats().depth == 0
        assert box.put(Channel.EVENTS, {}) == 1  # failures consumed no seq


def test_concurrent_puts_get_unique_ordered_seqs(tmp_path: Path) -> None:
    with _open(tmp_path) as box:
        got: list[list[int]] = [[] for _ in range(4)]

        def work(k: int) -> None:
            for i in range(200):
                got[k].append(box.put(Channel.PREDICTIONS, {"k": k, "i": i}))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flat = sorted(s for g in got for s in g)
        assert flat == list(range(1, 801))
        for g in got:
            assert g == sorted(g)
        stored = box.peek(1000)
        assert [r.seq for r in stored] == flat


def test_closed_and_corrupt(tmp_path: Path) -> None:
    box = _open(tmp_path)
    box.close()
    box.close()
    with pytest.raises(OutboxError):
        box.put(Channel.EVENTS, {})
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError):
        Outbox(bad)


def test_committed_rows_visible_to_another_connection(tmp_path: Path) -> None:
    """What put() returned is in the file: a separate reader sees it immediately."""
    with _open(tmp_path) as box:
        seq = box.put(Channel.EVENTS, {"e": 1})
        reader = sqlite3.connect(tmp_path / "outbox.sqlite")
        try:
            assert reader.execute("SELECT seq FROM outbox").fetchall() == [(seq,)]
        finally:
            reader.close()
