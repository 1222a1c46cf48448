"""The stage transition table (pure)."""

from __future__ import annotations

import itertools

import pytest

from edgefleet.fleet_server.registry.errors import ApprovalRequiredError, InvalidTransitionError
from edgefleet.fleet_server.registry.stages import TRANSITIONS, Stage, check_transition


@pytest.mark.parametrize(("current", "target"), list(itertools.product(Stage, Stage)))
def test_only_table_transitions_allowed(current: Stage, target: Stage):
    if target in TRANSITIONS[current]:
        assert check_transition(current, target, approved=True) is target
    else:
        with pytest.raises(InvalidTransitionError):
            check_transition(current, target, approved=True)


def test_production_needs_approval():
    with pytest.raises(ApprovalRequiredError):
        check_transition(Stage.STAGING, Stage.PRODUCTION, approved=False)


def test_only_staging_leads_to_production_and_archived_is_terminal():
    assert [s for s in Stage if Stage.PRODUCTION in TRANSITIONS[s]] == [Stage.STAGING]
    assert TRANSITIONS[Stage.ARCHIVED] == frozenset()
