"""Roles: admin > operator > viewer, and token scopes. Pure, no I/O."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """What a user or token may do; a higher role may do everything a lower one may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """0 for viewer, 1 for operator, 2 for admin."""
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        """True when this role may do what ``other`` may."""
        return self.rank >= other.rank

    @staticmethod
    def lowest(a: Role, b: Role) -> Role:
        """The weaker of two roles."""
        return a if a.rank <= b.rank else b


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class Scope(enum.StrEnum):
    """What an API token may be used for, on top of its role."""

    READ = "read"  # GET/HEAD requests
    WRITE = "write"  # state-changing requests (POST/PUT/PATCH/DELETE)
