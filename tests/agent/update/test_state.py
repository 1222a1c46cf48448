"""The transition table, the record and its atomic persistence."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from edgefleet.agent.update.state import (
    RESTING_STATES,
    TRANSITIONS,
    Assignment,
    IllegalTransition,
    StateFileError,
    StateStore,
    UpdateEvent,
    UpdateRecord,
    UpdateState,
    atomic_write_bytes,
    next_state,
)

S, E = UpdateState, UpdateEvent

# Written out independently of the implementation: changing the machine means changing this.
EXPECTED = {
    (S.IDLE, E.CHECK): S.CHECKING,
    (S.COMMITTED, E.CHECK): S.CHECKING,
    (S.CHECKING, E.NO_UPDATE): S.IDLE,
    (S.CHECKING, E.ASSIGNED): S.DOWNLOADING,
    (S.CHECKING, E.FAILED): S.IDLE,
    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFYING,
    (S.DOWNLOADING, E.FAILED): S.ROLLING_BACK,
    (S.VERIFYING, E.VERIFIED): S.STAGING,
    (S.VERIFYING, E.FAILED): S.ROLLING_BACK,
    (S.STAGING, E.STAGED): S.WARMING,
    (S.STAGING, E.FAILED): S.ROLLING_BACK,
    (S.WARMING, E.WARMED): S.SWITCHING,
    (S.WARMING, E.FAILED): S.ROLLING_BACK,
    (S.SWITCHING, E.SWITCHED): S.COMMITTED,
    (S.SWITCHING, E.FAILED): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.ROLLED_BACK): S.IDLE,
}
ALL_PAIRS = list(itertools.product(UpdateState, UpdateEvent))


def test_the_table_is_exactly_the_expected_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p in EXPECTED])
def test_legal_transition(state: UpdateState, event: UpdateEvent) -> None:
    assert next_state(state, event) is EXPECTED[(state, event)]


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p not in EXPECTED])
def test_illegal_transition_is_refused(state: UpdateState, event: UpdateEvent) -> None:
    with pytest.raises(IllegalTransition) as info:
        next_state(state, event)
    assert info.value.state is state and info.value.event is event
    assert state.value in str(info.value) and event.value in str(info.value)


def test_every_state_is_reachable_and_can_reach_rest() -> None:
    edges: dict[UpdateState, set[UpdateState]] = {}
    for (src, _), dst in TRANSITIONS.items():
        edges.setdefault(src, set()).add(dst)

    def reachable(start: UpdateState) -> set[UpdateState]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reachable(S.IDLE) == set(UpdateState)
    for state in UpdateState:
        assert reachable(state) & RESTING_STATES, state
    # every busy state can fail; failures past the check always go through ROLLING_BACK
    for state in set(UpdateState) - RESTING_STATES - {S.ROLLING_BACK}:
        assert (state, E.FAILED) in TRANSITIONS
        if state is not S.CHECKING:
            assert TRANSITIONS[(state, E.FAILED)] is S.ROLLING_BACK


def _record() -> UpdateRecord:
    return UpdateRecord(
        state=S.WARMING, seq=7,
        assignment=Assignment("mlp/2.tar", 1234, {"sha256": "ab" * 32}, {"version": "2"}),
        bundle_path="/x/mlp-2.tar", target_slot="B", previous_slot="A",
        failed_in=S.STAGING, error="boom", rejected=("k1", "k2"),
    )


def test_record_round_trips_through_the_store(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state" / "update.json")
    assert store.load() == UpdateRecord()  # nothing saved yet: fresh IDLE
    store.save(_record())
    assert store.load() == _record()
    assert [p.name for p in store.path.parent.iterdir()] == ["update.json"]  # no temp left


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": 99}',
                                     b'{"format": 1, "state": "nope", "seq": 0}',
                                     b'{"format": 1, "seq": 0}'])
def test_a_damaged_state_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "update.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError):
        StateStore(path).load()


def test_atomic_write_replaces_whole_file_and_ignores_stale_temp(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    atomic_write_bytes(path, b"old")
    (tmp_path / ".f.json.leftover.tmp").write_bytes(b"half")  # a crash's leftover
    atomic_write_bytes(path, json.dumps({"new": 1}).encode())
    assert json.loads(path.read_bytes()) == {"new": 1}


def test_assignment_key_depends_on_content() -> None:
    a = Assignment("b.tar", 10, {"sha256": "00" * 32})
    b = Assignment("b.tar", 10, {"sha256": "11" * 32})
    assert a.key != b.key and a.key == Assignment.from_dict(a.to_dict()).key
