"""Errors of the auth package, split by whose fault they are."""

from __future__ import annotations


class AuthError(Exception):
    """Base class of auth errors."""


class NotFound(AuthError):
    """The user or token does not exist."""


class Conflict(AuthError):
    """The change clashes with existing state (duplicate username, last admin...)."""


class Forbidden(AuthError):
    """The actor may not make this change."""


class InvalidCredentials(AuthError):
    """Wrong username or password (never says which)."""
