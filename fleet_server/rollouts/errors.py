"""The rollouts feature's exceptions (the API maps them to 404 / 409 / 400)."""

from __future__ import annotations


class RolloutError(Exception):
    """Base class of rollout errors."""


class RolloutNotFound(RolloutError):
    """No rollout (or experiment) with that id."""


class RolloutConflict(RolloutError):
    """The request conflicts with the current state (a device already in an active
    rollout, a rollout not in a state that allows the action, a release not published)."""


class RolloutInvalid(RolloutError):
    """The request names something that does not exist or cannot take part."""
