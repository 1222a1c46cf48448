"""The lifecycle of a model version: one Enum of stages, one transition table.

Pure logic, no I/O. ``check_transition`` is the only place that decides whether a
version may move from one stage to another; the service persists the result.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.fleet_server.registry.errors import ApprovalRequiredError, InvalidTransitionError


class Stage(StrEnum):
    """Where a model version is in its lifecycle."""

    DRAFT = "draft"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


#: Every allowed move. Archived is terminal: a retired version is re-released by
#: uploading a new version (versions are immutable), never by un-archiving.
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.DRAFT: frozenset({Stage.STAGING, Stage.ARCHIVED}),
    Stage.STAGING: frozenset({Stage.PRODUCTION, Stage.DRAFT, Stage.ARCHIVED}),
    Stage.PRODUCTION: frozenset({Stage.ARCHIVED}),
    Stage.ARCHIVED: frozenset(),
}

#: Stages a version may be approved in (approval is the gate into production).
APPROVABLE: frozenset[Stage] = frozenset({Stage.STAGING})


def check_transition(current: Stage, target: Stage, *, approved: bool) -> Stage:
    """Return ``target`` if a version in ``current`` may move there, else raise.

    Raises:
        InvalidTransitionError: the move is not in :data:`TRANSITIONS`.
        ApprovalRequiredError: the move is into production and no approval is recorded.
    """
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none"
        raise InvalidTransitionError(
            f"cannot move a version from {current.value} to {target.value} "
            f"(allowed from {current.value}: {allowed})"
        )
    if target is Stage.PRODUCTION and not approved:
        raise ApprovalRequiredError(
            "promotion to production requires an approval (POST .../approve) first"
        )
    return target
